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

mod dispatch;
mod guard;

use std::time::Duration;

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub use dispatch::{
    api_client, confirm_gone, dispatch, unconfirmed_gone, DispatchOutcome, Dispatched,
};
pub use guard::{
    lookup_target, plan_global, plan_workspace, RestartPlan, Skip, SkipReason, Target, TargetRow,
};

/// Every static statement of the restart rules, by name (each is prepared against the
/// platform schema by a test).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("restart_target", guard::TARGET_SQL),
    ("restart_fanout", guard::FANOUT_SQL),
    ("restart_live_among", dispatch::LIVE_AMONG_SQL),
];

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
    pub(super) total_timeout: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
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
