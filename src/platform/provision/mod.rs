//! Bringing the platform agent to life: after an install commits, ask the platform to
//! provision the agent when it is not running, and optionally watch its status until it is
//! `online`, `failed`, or a deadline passes.
//!
//! The request is the platform's own `POST {URL}/admin/org/platform-agent/ensure` ([`ENSURE_PATH`])
//! with the admin bearer, body `{}` or `{"model": M}`, and the org id header ([`ORG_HEADER`])
//! when the org id is known. The platform validates the model for the agent's runtime, writes
//! MODEL (seeding its default when none is set), revives and repairs the row, and provisions.
//! The manual `POST /workspaces/{id}/restart` is never used for the agent: it restarts a
//! booting agent as readily as a stopped one.
//!
//! The platform answers `ensure` for anything that is not `online` with a restart, so orgctl
//! only asks for an agent this run created, or one that nothing is running or starting
//! (`offline`, `failed`, no status): never for `online`, `degraded`, `provisioning` (on the
//! platform that is its own restart in flight, or a row an older install left that its sweep
//! turns `failed`), `awaiting_agent` (booted, waiting for the agent to register), nor the
//! states the platform does not run (`removed`, `paused`, `hibernated`, `hibernating`) or an
//! external runtime. Watching is read-only: one short read-only transaction per poll, about
//! once a second.

pub(crate) mod ensure;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::restart::Platform;
use crate::db;
use crate::error::Error;

pub use ensure::{post_ensure, EnsureOutcome};

/// How often the agent's status is read while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The platform's route that installs, repairs and provisions its agent.
pub const ENSURE_PATH: &str = "/admin/org/platform-agent/ensure";
/// The header that names the org to a tenant server addressed directly (without it such a
/// server answers 400 [`ORG_HEADER_REQUIRED`]).
pub const ORG_HEADER: &str = "X-Molecule-Org-Id";
/// The platform's `code` for a 400 that lacks [`ORG_HEADER`].
pub const ORG_HEADER_REQUIRED: &str = "TENANT_ORG_HEADER_REQUIRED";
/// The runtime whose agents the platform gives the longer provisioning deadline.
pub const SLOW_RUNTIME: &str = "hermes";
/// The platform's provisioning deadline for [`SLOW_RUNTIME`] (its sweep marks a `provisioning`
/// agent `failed` after it), and for every other runtime: `--wait` without a value waits that
/// long.
pub const SLOW_RUNTIME_DEADLINE: Duration = Duration::from_secs(30 * 60);
pub const RUNTIME_DEADLINE: Duration = Duration::from_secs(12 * 60);
/// At most this many characters of a platform message are shown.
pub(crate) const MESSAGE_MAX: usize = 300;

/// How long `--wait` watches: the value given, or the platform's own provisioning deadline for
/// the agent's runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Runtime,
    For(Duration),
}

impl Wait {
    /// From the flag: absent, `--wait` alone, or `--wait DUR`.
    pub fn from_arg(arg: Option<Option<Duration>>) -> Option<Wait> {
        arg.map(|d| d.map(Wait::For).unwrap_or(Wait::Runtime))
    }

    /// The deadline for an agent on `runtime`.
    pub fn deadline(self, runtime: Option<&str>) -> Duration {
        match self {
            Wait::For(d) => d,
            Wait::Runtime if runtime == Some(SLOW_RUNTIME) => SLOW_RUNTIME_DEADLINE,
            Wait::Runtime => RUNTIME_DEADLINE,
        }
    }
}

/// What the request carries besides the bearer: the org id header and the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ask<'a> {
    pub org_id: Option<&'a str>,
    pub model: Option<&'a str>,
}

/// The `provision` object of the JSON output and the backfill report (its field names are a
/// contract scripts rely on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProvisionResult {
    /// A provision request was sent (whatever the platform answered).
    pub requested: bool,
    /// Why no request was sent (`online`, `degraded`, `provisioning`, `awaiting_agent`,
    /// `paused`, `removed`, `hibernated`, `hibernating`, `external`, `missing`, `dry-run`,
    /// `no platform URL`, `not installed`, `interrupted`), else null.
    pub skipped: Option<String>,
    /// The platform's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// The agent's status when orgctl stopped looking (null when it could not be read).
    pub final_status: Option<String>,
    /// How long orgctl waited for the agent (0 without --wait).
    pub waited_ms: u64,
    /// A model was sent with the request (for the platform to validate and write as MODEL).
    pub model_sent: bool,
    /// The platform's answer: `created`, `repaired` or `exists`.
    pub platform_status: Option<String>,
    /// The agent's status before the request, as the platform reported it.
    pub agent_status: Option<String>,
    /// Whether the platform started provisioning the agent.
    pub provisioning: Option<bool>,
    /// The platform's error code of a refused request (`RUNTIME_UNSUPPORTED`,
    /// `UNREGISTERED_MODEL_FOR_RUNTIME`, `TENANT_ORG_HEADER_REQUIRED`, …).
    pub error_code: Option<String>,
    /// The platform's reason when it marked the agent failed (`last_sample_error`).
    pub last_error: Option<String>,
}

impl ProvisionResult {
    pub fn skipped(reason: &str) -> Self {
        ProvisionResult {
            skipped: Some(reason.to_string()),
            ..Default::default()
        }
    }

    /// Whether the platform accepted the request (so a model sent with it was written).
    pub fn accepted(&self) -> bool {
        self.requested
            && matches!(self.http_status, Some(c) if (200..300).contains(&c))
            && self.error_code.is_none()
    }

    /// One short phrase for a summary table: `online in 3.2s`, `skipped (no platform URL)`.
    pub fn short(&self, problem: Option<&Error>) -> String {
        let status = self.final_status.as_deref().unwrap_or("unknown");
        if let Some(reason) = &self.skipped {
            return if problem.is_some() {
                format!("skipped ({reason}); agent {status}")
            } else {
                format!("skipped ({reason})")
            };
        }
        let accepted = matches!(self.http_status, Some(c) if (200..300).contains(&c));
        if problem.is_some() && !accepted {
            return match (self.http_status, &self.error_code) {
                (Some(c), Some(code)) => format!("refused (HTTP {c} {code})"),
                (Some(c), None) => format!("request failed (HTTP {c})"),
                _ => "request failed".to_string(),
            };
        }
        if self.provisioning == Some(false) {
            return format!(
                "not provisioned by the platform ({}); agent {status}",
                self.platform_status.as_deref().unwrap_or("no reason given")
            );
        }
        if self.waited_ms == 0 {
            format!("requested; agent {status}")
        } else {
            format!(
                "{status} after {}",
                crate::output::duration::human_ms(self.waited_ms)
            )
        }
    }
}

/// What became of a provisioning: the result to report, and the problem that makes the command
/// exit non-zero (exit 1, 3 when the platform refused the model, or 130 when interrupted), if
/// any. The change itself is committed whatever happens here, and every message says so.
#[derive(Debug)]
pub struct Provisioned {
    pub result: ProvisionResult,
    pub problem: Option<Error>,
}

/// The agent as orgctl sees it before asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub status: Option<String>,
    /// The agent's runtime as stored (the platform's column default is `hermes`).
    pub runtime: Option<String>,
    /// The row's `url`: NULL on a row nothing has started, '' while the platform restarts it.
    /// Read through `to_jsonb(row)->>'url'`, so a schema without the column reads as NULL.
    pub url: Option<String>,
    /// The platform's reason for `failed` (`last_sample_error`, read the same way).
    pub last_error: Option<String>,
    /// When the row was last updated (to tell a fresh `failed` from the one before the request).
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The agent's state, one read-only statement (run it inside a transaction).
pub async fn agent_state(
    conn: &mut PgConnection,
    id: Uuid,
) -> std::result::Result<Option<AgentState>, sqlx::Error> {
    let row = db::query(AGENT_STATE_SQL)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(AgentState {
        status: r.try_get(0)?,
        runtime: r.try_get(1)?,
        url: r.try_get(2)?,
        last_error: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    }))
}

/// Whether to ask the platform to provision the agent: `None` to ask, else the reason not to.
///
/// Asked for: an agent this run created, or one that is `offline`, `failed`, or has no status
/// (nothing runs or starts it). Never for `online` or `degraded` (a running root is never
/// restarted), `provisioning` or `awaiting_agent` unless this run created it (the platform is
/// starting it: asking again would restart a booting agent), nor `removed`, `paused`,
/// `hibernated`, `hibernating` (the platform does not run those) or an external runtime.
pub fn decide(created: bool, state: Option<&AgentState>) -> Option<&'static str> {
    let Some(s) = state else {
        return Some("missing");
    };
    match s.status.as_deref() {
        Some("online") => return Some("online"),
        Some("degraded") => return Some("degraded"),
        Some("removed") => return Some("removed"),
        Some("paused") => return Some("paused"),
        Some("hibernated") => return Some("hibernated"),
        Some("hibernating") => return Some("hibernating"),
        _ => {}
    }
    if s.runtime.as_deref() == Some("external") {
        return Some("external");
    }
    if created {
        return None;
    }
    match s.status.as_deref() {
        None | Some("offline") | Some("failed") => None,
        Some("provisioning") => Some("provisioning"),
        Some("awaiting_agent") => Some("awaiting_agent"),
        // A status this orgctl does not know (a TEXT column on an older tenant): do not guess.
        Some(_) => Some("unknown-status"),
    }
}

/// Whether `--provision` acts on an agent in `state` (a new agent, `state` None, always):
/// [`decide`] says to ask.
pub fn acts_on(state: Option<&AgentState>) -> bool {
    match state {
        None => true,
        Some(_) => decide(false, state).is_none(),
    }
}

/// The platform for `--provision`: the URL (`--platform-url` / `MOLECULE_PLATFORM_URL`) and
/// `MOLECULE_ADMIN_TOKEN` are both required, checked before anything is changed (exit 2).
pub fn platform_for(url: Option<&str>) -> crate::error::Result<Platform> {
    let platform = Platform::resolve(url, false)?.ok_or_else(|| {
        Error::usage(
            "--provision needs the platform API: pass --platform-url or set MOLECULE_PLATFORM_URL (nothing was changed)",
        )
    })?;
    if !platform.has_token() {
        return Err(Error::usage(
            "--provision needs MOLECULE_ADMIN_TOKEN (the platform's admin bearer token); set it and rerun (nothing was changed)",
        ));
    }
    Ok(platform)
}

/// What stops a wait early: Ctrl-C for a command, the first Ctrl-C of a backfill.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ctrl-C as a [`Stop`].
pub fn ctrl_c() -> Stop {
    Box::pin(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

/// The audit command of a provision request's own row (what happens after a commit is audited
/// too).
pub const PROVISION_COMMAND: &str = "provision";

/// The agent's status, runtime, container url, last error and last update (`url` and
/// `last_sample_error` through `to_jsonb(row)`, so a schema without those columns reads NULL).
const AGENT_STATE_SQL: &str = "SELECT w.status::text, w.runtime, to_jsonb(w) ->> 'url',
                to_jsonb(w) ->> 'last_sample_error', w.updated_at
           FROM workspaces w WHERE w.id = $1";

/// Every static statement of provisioning, by name (each is prepared against the platform
/// schema by a test).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[("provision_agent_state", AGENT_STATE_SQL)];

#[cfg(test)]
mod tests {
    use super::*;

    fn st(status: Option<&str>, runtime: &str, url: Option<&str>) -> AgentState {
        AgentState {
            status: status.map(str::to_string),
            runtime: Some(runtime.into()),
            url: url.map(str::to_string),
            last_error: None,
            updated_at: None,
        }
    }

    #[test]
    fn a_running_agent_is_never_provisioned() {
        for created in [false, true] {
            for status in ["online", "degraded"] {
                for url in [None, Some(""), Some("http://a")] {
                    assert_eq!(
                        decide(created, Some(&st(Some(status), "hermes", url))),
                        Some(status)
                    );
                }
            }
        }
    }

    #[test]
    fn what_is_provisioned() {
        // Created by this run: asked for even while the platform marks it provisioning.
        assert_eq!(
            decide(true, Some(&st(Some("provisioning"), "hermes", Some("")))),
            None
        );
        for s in [Some("offline"), Some("failed"), None] {
            assert_eq!(decide(false, Some(&st(s, "hermes", None))), None, "{s:?}");
        }
        // Booting (the platform's own restart, or waiting for the agent to register), or a row
        // an older install left `provisioning`: never asked for.
        for url in [None, Some(""), Some("http://a")] {
            assert_eq!(
                decide(false, Some(&st(Some("provisioning"), "hermes", url))),
                Some("provisioning")
            );
        }
        assert_eq!(
            decide(false, Some(&st(Some("awaiting_agent"), "hermes", None))),
            Some("awaiting_agent")
        );
        for s in ["removed", "paused", "hibernated", "hibernating"] {
            assert_eq!(decide(true, Some(&st(Some(s), "hermes", None))), Some(s));
        }
        assert_eq!(
            decide(true, Some(&st(Some("offline"), "external", None))),
            Some("external")
        );
        assert_eq!(decide(false, None), Some("missing"));
        assert_eq!(
            decide(false, Some(&st(Some("starting"), "hermes", None))),
            Some("unknown-status")
        );
        assert!(acts_on(None));
        assert!(!acts_on(Some(&st(Some("provisioning"), "hermes", None))));
    }

    #[test]
    fn the_default_deadline_follows_the_runtime() {
        assert_eq!(
            Wait::Runtime.deadline(Some("hermes")),
            Duration::from_secs(1800)
        );
        assert_eq!(
            Wait::Runtime.deadline(Some("langgraph")),
            Duration::from_secs(720)
        );
        assert_eq!(Wait::Runtime.deadline(None), Duration::from_secs(720));
        assert_eq!(
            Wait::For(Duration::from_secs(5)).deadline(Some("hermes")),
            Duration::from_secs(5)
        );
        assert_eq!(Wait::from_arg(None), None);
        assert_eq!(Wait::from_arg(Some(None)), Some(Wait::Runtime));
    }
}
