//! Bringing the platform agent to life (SPEC §9): after an install commits, ask the platform to
//! provision the agent when it is not running, and optionally watch its status until it is
//! `online`, `failed`, or a deadline passes.
//!
//! The request is the platform's manual `POST /workspaces/{id}/restart`, sent with the same
//! client as secret restarts ([`super::restart::post_restart`]). A running root is never
//! restarted: an agent that is `online` or `degraded` is never sent a request, whatever else
//! holds (the platform-root guard of SPEC §1). Watching is read-only: one short read-only
//! transaction per poll, about once a second.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::restart::{post_restart, Platform};
use crate::db::{self, Settings};
use crate::error::{Error, Exit};
use crate::output::Output;

/// How often the agent's status is read while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The `provision` object of the JSON output and the backfill report (SPEC §9).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProvisionResult {
    /// A provision request was sent (whatever the platform answered).
    pub requested: bool,
    /// Why no request was sent (`online`, `degraded`, `provisioning`, `paused`, `removed`,
    /// `hibernated`, `external`, `missing`, `dry-run`, `no platform URL`, `not installed`,
    /// `interrupted`), else null.
    pub skipped: Option<String>,
    /// The platform's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// The agent's status when orgctl stopped looking (null when it could not be read).
    pub final_status: Option<String>,
    /// How long orgctl waited for the agent (0 without --wait).
    pub waited_ms: u64,
}

impl ProvisionResult {
    pub fn skipped(reason: &str) -> Self {
        ProvisionResult {
            skipped: Some(reason.to_string()),
            ..Default::default()
        }
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
            return match self.http_status {
                Some(c) => format!("request failed (HTTP {c})"),
                None => "request failed".to_string(),
            };
        }
        if self.waited_ms == 0 {
            format!("requested; agent {status}")
        } else {
            format!(
                "{status} after {}",
                crate::backfill::fmt_duration(self.waited_ms)
            )
        }
    }
}

/// What became of a provisioning: the result to report, and the problem that makes the command
/// exit non-zero (exit 1, or 130 when interrupted), if any. The change itself is committed
/// whatever happens here, and every message says so.
#[derive(Debug)]
pub struct Provisioned {
    pub result: ProvisionResult,
    pub problem: Option<Error>,
}

/// The agent as orgctl sees it before asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub status: Option<String>,
    pub runtime: String,
    /// Whether the row carries a URL. Read through `to_jsonb(row)->>'url'`, so a schema without
    /// a `url` column (the test schema) reads as "no URL".
    pub has_url: bool,
    /// When the row was last updated (to tell a fresh `failed` from the one before the request).
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The agent's state, one read-only statement (run it inside a transaction).
pub async fn agent_state(
    conn: &mut PgConnection,
    id: Uuid,
) -> std::result::Result<Option<AgentState>, sqlx::Error> {
    let row = db::query(
        "SELECT w.status::text, COALESCE(w.runtime, 'langgraph'),
                NULLIF(to_jsonb(w) ->> 'url', '') IS NOT NULL, w.updated_at
           FROM workspaces w WHERE w.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(AgentState {
        status: r.try_get(0)?,
        runtime: r.try_get(1)?,
        has_url: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    }))
}

/// Whether to ask the platform to provision the agent: `None` to ask, else the reason not to.
///
/// Asked for: an agent this run created, or one that is `offline`, `failed`, `provisioning`
/// with no URL (nothing is starting it), or has no status. Never for `online` or `degraded`
/// (a running root is never restarted), nor `removed`, `paused`, `hibernated` (the platform
/// does not run those) or an external runtime.
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
        _ => {}
    }
    if s.runtime == "external" {
        return Some("external");
    }
    if created {
        return None;
    }
    match s.status.as_deref() {
        None | Some("offline") | Some("failed") => None,
        Some("provisioning") if !s.has_url => None,
        Some("provisioning") => Some("provisioning"),
        // A status this orgctl does not know (a TEXT column on an older tenant): do not guess.
        Some(_) => Some("unknown-status"),
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

/// Provision agent `id` after the commit of `what` (e.g. "the install"): decide, request,
/// and with `wait` watch the status. `conn` is free (its transaction committed).
#[allow(clippy::too_many_arguments)]
pub async fn provision(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    platform: &Platform,
    id: Uuid,
    created: bool,
    wait: Option<Duration>,
    mut stop: Stop,
    what: &str,
) -> Provisioned {
    let committed = format!("{what} is committed");
    let before = match read_state(conn, settings, id).await {
        Ok(s) => s,
        Err(e) => {
            return Provisioned {
                result: ProvisionResult::skipped("status-unreadable"),
                problem: Some(Error::failed(format!(
                    "{committed}, but the platform agent {id}'s status could not be read ({}), so it was not provisioned: rerun with --provision",
                    e.message
                ))),
            }
        }
    };
    let mut result = ProvisionResult {
        final_status: before.as_ref().and_then(|s| s.status.clone()),
        ..Default::default()
    };
    let skip = decide(created, before.as_ref());
    if let Some(reason) = skip {
        result.skipped = Some(reason.to_string());
        let problem = match reason {
            "online" | "degraded" => None,
            // The platform is starting it already: watch it like any other.
            "provisioning" => None,
            _ if wait.is_some() => Some(Error::failed(format!(
                "{committed}; the platform agent {id} is {}: orgctl does not provision it, so it cannot come online",
                match reason {
                    "external" => "on an external runtime",
                    "missing" => "gone (its row is missing)",
                    other => other,
                }
            ))),
            _ => {
                out.warn(&format!(
                    "the platform agent {id} was not provisioned: {reason}"
                ));
                None
            }
        };
        if problem.is_some() || reason != "provisioning" || wait.is_none() {
            return Provisioned { result, problem };
        }
    } else {
        // Not interruptible: the call is bounded (3s connect, 20s in all), and what it did must
        // be reported truthfully.
        let p = platform.clone();
        let outcome = tokio::task::spawn_blocking(move || post_restart(&p, id)).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => super::restart::PostOutcome {
                http_status: None,
                error: Some(format!("internal: the request task failed: {e}")),
            },
        };
        result.requested = true;
        result.http_status = outcome.http_status;
        if let Some(err) = outcome.error {
            return Provisioned {
                result,
                problem: Some(Error::failed(format!(
                    "{committed}, but the platform did not accept the provision request for agent {id} ({err}): fix the platform URL or MOLECULE_ADMIN_TOKEN and rerun with --provision"
                ))),
            };
        }
        out.info(&format!("Asked the platform to provision agent {id}."));
    }
    let Some(wait) = wait else {
        return Provisioned {
            result,
            problem: None,
        };
    };

    // Watch, read-only, about once a second.
    let start = Instant::now();
    let deadline = start + wait;
    let spinner = out.spinner(&format!("waiting for agent {id} to come online"));
    let prior_failed = before.as_ref().and_then(|s| s.status.as_deref()) == Some("failed");
    let prior_updated = before.as_ref().and_then(|s| s.updated_at);
    let mut seen_other = false;
    let end = loop {
        let state = read_state(conn, settings, id).await;
        match state {
            Err(e) => {
                break Err(Error::failed(format!(
                    "{committed} and provisioning was requested, but the agent {id}'s status could not be read while waiting ({})",
                    e.message
                )))
            }
            Ok(None) => {
                break Err(Error::failed(format!(
                    "{committed}, but the platform agent {id} disappeared while waiting"
                )))
            }
            Ok(Some(s)) => {
                let status = s.status.clone();
                result.final_status = status.clone();
                spinner.set_message(format!(
                    "waiting for agent {id} to come online (now {})",
                    status.as_deref().unwrap_or("null")
                ));
                match status.as_deref() {
                    Some("online") => break Ok(()),
                    // A `failed` left from before the request is not the answer: wait for the
                    // platform to move the agent on (or to touch the row).
                    Some("failed")
                        if !prior_failed || seen_other || s.updated_at != prior_updated =>
                    {
                        break Err(Error::failed(format!(
                            "{committed}, but the platform marked the agent {id} failed: the platform marks an agent without a MODEL secret failed at registration; set it (orgctl secret set {id} MODEL) and rerun with --provision"
                        )))
                    }
                    Some("failed") => {}
                    _ => seen_other = true,
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(Error::failed(format!(
                "the platform agent {id} is still {} after waiting {}; {committed} and stays committed: check the platform, or wait longer with `orgctl status`",
                result.final_status.as_deref().unwrap_or("without a status"),
                crate::db::humanize(wait)
            )));
        }
        let nap = POLL_INTERVAL.min(deadline - now);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = &mut stop => {
                break Err(Error::new(
                    Exit::Interrupted,
                    format!(
                        "interrupted while waiting for the platform agent {id} (status {}); {committed}{}",
                        result.final_status.as_deref().unwrap_or("unknown"),
                        if result.requested { " and provisioning was requested" } else { "" }
                    ),
                ))
            }
        }
    };
    spinner.finish_and_clear();
    result.waited_ms = crate::backfill::millis(start.elapsed());
    Provisioned {
        result,
        problem: end.err(),
    }
}

/// One read of the agent's state in its own read-only transaction (pooler-safe: no statement
/// outside a transaction).
async fn read_state(
    conn: &mut PgConnection,
    settings: &Settings,
    id: Uuid,
) -> crate::error::Result<Option<AgentState>> {
    let mut tx = db::begin_read_only(conn, settings).await?;
    let s = agent_state(&mut tx, id).await?;
    tx.rollback().await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(status: Option<&str>, runtime: &str, has_url: bool) -> AgentState {
        AgentState {
            status: status.map(str::to_string),
            runtime: runtime.into(),
            has_url,
            updated_at: None,
        }
    }

    #[test]
    fn a_running_agent_is_never_provisioned() {
        for created in [false, true] {
            for status in ["online", "degraded"] {
                for url in [false, true] {
                    assert_eq!(
                        decide(created, Some(&st(Some(status), "langgraph", url))),
                        Some(status)
                    );
                }
            }
        }
    }

    #[test]
    fn what_is_provisioned() {
        assert_eq!(
            decide(true, Some(&st(Some("provisioning"), "langgraph", true))),
            None
        );
        for s in [Some("offline"), Some("failed"), None] {
            assert_eq!(
                decide(false, Some(&st(s, "langgraph", false))),
                None,
                "{s:?}"
            );
        }
        assert_eq!(
            decide(false, Some(&st(Some("provisioning"), "x", false))),
            None
        );
        assert_eq!(
            decide(false, Some(&st(Some("provisioning"), "x", true))),
            Some("provisioning")
        );
        for s in ["removed", "paused", "hibernated"] {
            assert_eq!(
                decide(true, Some(&st(Some(s), "langgraph", false))),
                Some(s)
            );
        }
        assert_eq!(
            decide(true, Some(&st(Some("offline"), "external", false))),
            Some("external")
        );
        assert_eq!(decide(false, None), Some("missing"));
        assert_eq!(
            decide(false, Some(&st(Some("starting"), "langgraph", false))),
            Some("unknown-status")
        );
    }
}
