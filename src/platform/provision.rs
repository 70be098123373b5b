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

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::restart::Platform;
use crate::db::{self, Settings};
use crate::error::{sanitize, Error, Exit};
use crate::output::Output;

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
const MESSAGE_MAX: usize = 300;
/// At most this much of an answer's body is read.
const BODY_MAX: u64 = 64 * 1024;

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
    let row = db::query(
        "SELECT w.status::text, w.runtime, to_jsonb(w) ->> 'url',
                to_jsonb(w) ->> 'last_sample_error', w.updated_at
           FROM workspaces w WHERE w.id = $1",
    )
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

/// The org id from `MOLECULE_ORG_ID`: trimmed, empty is none. It travels as a header, so a
/// value with control characters is refused (exit 2).
pub fn org_id_from_env() -> crate::error::Result<Option<String>> {
    let Ok(raw) = std::env::var("MOLECULE_ORG_ID") else {
        return Ok(None);
    };
    let id = raw.trim();
    if id.is_empty() {
        return Ok(None);
    }
    if id.chars().any(|c| c.is_control()) || !id.is_ascii() {
        return Err(Error::usage(
            "MOLECULE_ORG_ID contains control or non-ASCII characters; it cannot be sent to the platform (nothing was changed)",
        ));
    }
    Ok(Some(id.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The ensure call

/// What the platform answered to one ensure call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    pub http_status: Option<u16>,
    /// 2xx: `status`, `platform_agent_id`, `agent_status`, `provisioning` of the answer.
    pub status: Option<String>,
    pub agent_id: Option<Uuid>,
    pub agent_status: Option<String>,
    pub provisioning: Option<bool>,
    /// 4xx/5xx: the platform's `code` (when it is a plain identifier) and its `error` message
    /// (control characters replaced, bounded, masked).
    pub code: Option<String>,
    pub message: Option<String>,
    /// What went wrong, one line (status line or transport error), unless a 2xx came back.
    pub error: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct EnsureBody {
    status: Option<String>,
    platform_agent_id: Option<String>,
    agent_status: Option<String>,
    provisioning: Option<bool>,
    code: Option<String>,
    error: Option<String>,
}

/// A platform-supplied string made safe to show: control characters replaced, bounded, the
/// token and other registered secrets masked.
fn shown(s: &str, max: usize) -> String {
    let mut t: String = sanitize(s.trim()).chars().take(max).collect();
    if s.trim().chars().count() > max {
        t.push('…');
    }
    crate::redact::mask(&t)
}

/// An error `code` is kept only when it looks like one (upper-case letters, digits, `_`).
fn plain_code(c: &str) -> Option<String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_');
    ok.then(|| c.to_string())
}

fn read_body(resp: ureq::Response) -> EnsureBody {
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(resp.into_reader(), BODY_MAX),
        &mut text,
    );
    serde_json::from_str(&text).unwrap_or_default()
}

/// One ensure call, blocking (call it from `spawn_blocking`): the admin bearer, the org id
/// header when known, body `{}` or `{"model": M}`; 3s to connect, 20s in all, no redirects
/// (the bearer never travels elsewhere). Never retried: a provision is not idempotent.
pub fn post_ensure(platform: &Platform, ask: &Ask) -> EnsureOutcome {
    let agent = super::restart::api_client().build();
    let url = platform.endpoint(ENSURE_PATH);
    let mut req = agent
        .post(&url)
        .set("Content-Type", "application/json")
        .set("Accept", "application/json");
    let bearer = platform.bearer();
    if let Some(b) = &bearer {
        req = req.set("Authorization", b.as_str());
    }
    if let Some(org) = ask.org_id {
        req = req.set(ORG_HEADER, org);
    }
    let body = match ask.model {
        Some(m) => serde_json::json!({ "model": m }),
        None => serde_json::json!({}),
    };
    let mut out = EnsureOutcome::default();
    match req.send_string(&body.to_string()) {
        Ok(resp) if (200..300).contains(&resp.status()) => {
            out.http_status = Some(resp.status());
            let b = read_body(resp);
            out.status = b.status.as_deref().map(|s| shown(s, 40));
            out.agent_id = b
                .platform_agent_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s.trim()).ok());
            out.agent_status = b.agent_status.as_deref().map(|s| shown(s, 40));
            out.provisioning = b.provisioning;
        }
        Ok(resp) => {
            out.http_status = Some(resp.status());
            out.error = Some(format!(
                "HTTP {} {} (a redirect is not followed)",
                resp.status(),
                resp.status_text()
            ));
        }
        Err(ureq::Error::Status(code, resp)) => {
            out.http_status = Some(code);
            let line = format!("HTTP {code} {}", resp.status_text());
            let b = read_body(resp);
            out.code = b.code.as_deref().and_then(plain_code);
            // Only a refused model's message is shown: it says what the platform accepts.
            if code == 422 {
                out.message = b.error.as_deref().map(|m| shown(m, MESSAGE_MAX));
            }
            out.error = Some(line);
        }
        Err(ureq::Error::Transport(t)) => {
            // ureq prefixes the URL, which the caller already names.
            let msg = t.to_string();
            let prefix = format!("{url}: ");
            out.error = Some(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string());
        }
    }
    out.error = out.error.map(|e| crate::redact::mask(&sanitize(&e)));
    out
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

/// Record a provision request and its HTTP outcome as an audit row of its own, in a
/// transaction of its own (the install is committed already). A failure to record it is a
/// warning, never a change of the command's outcome. Never the model's value, only whether one
/// was sent.
async fn audit_request(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    id: Uuid,
    model_sent: bool,
    outcome: &EnsureOutcome,
) {
    let entry = crate::audit::AuditEntry {
        command: PROVISION_COMMAND.to_string(),
        args: serde_json::json!({
            "workspace_id": id,
            "route": ENSURE_PATH,
            "model_sent": model_sent,
            "http_status": outcome.http_status,
            "platform_status": outcome.status,
            "provisioning": outcome.provisioning,
            "code": outcome.code,
            "error": outcome.error.as_deref().map(crate::redact::mask),
        }),
        outcome: if outcome.error.is_none() {
            "requested"
        } else {
            "failed"
        }
        .to_string(),
        txid: None,
    };
    let written = async {
        let mut tx = db::begin_write(conn, settings).await?;
        crate::audit::append_audit(&mut tx, &[entry]).await?;
        tx.commit().await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = written {
        out.warn(&format!(
            "the provision request for agent {id} could not be recorded in orgctl.audit_log: {}",
            e.message
        ));
    }
}

/// Why a skipped agent is not asked for, in words.
fn skip_words(reason: &str, state: Option<&AgentState>) -> String {
    match reason {
        "external" => "on an external runtime".to_string(),
        "missing" => "gone (its row is missing)".to_string(),
        "provisioning" if state.is_some_and(|s| s.url.is_none()) => {
            "provisioning with no container (left by an older install); the platform's sweep marks it failed after its provisioning deadline, and --provision acts then".to_string()
        }
        "provisioning" => "provisioning: the platform is restarting it".to_string(),
        "awaiting_agent" => {
            "awaiting_agent: the platform has started it and waits for it to register".to_string()
        }
        other => other.to_string(),
    }
}

/// The error of a refused or failed ensure call, after the commit of `committed`.
fn ensure_error(committed: &str, id: Uuid, model_sent: bool, o: &EnsureOutcome) -> Error {
    let what = o.error.clone().unwrap_or_default();
    match (o.http_status, o.code.as_deref()) {
        (Some(422), code) => Error::refused(format!(
            "{committed}, but the platform refused the model for agent {id} ({what}{}): {}; {}",
            code.map(|c| format!(", {c}")).unwrap_or_default(),
            o.message.as_deref().unwrap_or("no reason given"),
            if model_sent {
                "MODEL was not set: rerun with a model registered for the agent's runtime"
            } else {
                "nothing was provisioned"
            }
        )),
        (Some(400), Some(ORG_HEADER_REQUIRED)) => Error::failed(format!(
            "{committed}, but the platform needs the org id to provision agent {id} ({what}, {ORG_HEADER_REQUIRED}): set MOLECULE_ORG_ID and rerun with --provision"
        )),
        (Some(400), code) => Error::failed(format!(
            "{committed}, but the platform refused the provision request for agent {id} as malformed ({what}{}); nothing was provisioned",
            code.map(|c| format!(", {c}")).unwrap_or_default()
        )),
        (Some(409), _) => Error::failed(format!(
            "{committed}, but the platform answered a conflict to the provision request for agent {id} ({what}): another install or provision is in progress; rerun with --provision later"
        )),
        (Some(c), _) if c >= 500 => Error::failed(format!(
            "{committed}, but the platform failed the provision request for agent {id} ({what}): check the platform and rerun with --provision"
        )),
        _ => Error::failed(format!(
            "{committed}, but the platform did not accept the provision request for agent {id} ({what}): fix the platform URL or MOLECULE_ADMIN_TOKEN and rerun with --provision"
        )),
    }
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
    ask: Ask<'_>,
    wait: Option<Wait>,
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
        let words = skip_words(reason, before.as_ref());
        // The platform is starting it already: watch it like any other.
        let starting = matches!(reason, "provisioning" | "awaiting_agent");
        let problem = match reason {
            "online" | "degraded" => None,
            _ if ask.model.is_some() => Some(Error::refused(format!(
                "{committed}; the platform agent {id} is {words}: orgctl does not ask the platform to provision it, so the model was not sent and MODEL was not set"
            ))),
            _ if starting => None,
            _ if wait.is_some() => Some(Error::failed(format!(
                "{committed}; the platform agent {id} is {words}: orgctl does not provision it, so it cannot come online"
            ))),
            _ => {
                out.warn(&format!(
                    "the platform agent {id} was not provisioned: it is {words}"
                ));
                None
            }
        };
        if problem.is_some() || !starting || wait.is_none() {
            return Provisioned { result, problem };
        }
    } else {
        // Not interruptible: the call is bounded (3s connect, 20s in all), and what it did must
        // be reported truthfully.
        let p = platform.clone();
        let (org, model) = (
            ask.org_id.map(str::to_string),
            ask.model.map(|m| zeroize::Zeroizing::new(m.to_string())),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            post_ensure(
                &p,
                &Ask {
                    org_id: org.as_deref(),
                    model: model.as_ref().map(|m| m.as_str()),
                },
            )
        })
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => EnsureOutcome {
                error: Some(format!("internal: the request task failed: {e}")),
                ..Default::default()
            },
        };
        result.requested = true;
        result.model_sent = ask.model.is_some();
        result.http_status = outcome.http_status;
        result.platform_status = outcome.status.clone();
        result.agent_status = outcome.agent_status.clone();
        result.provisioning = outcome.provisioning;
        result.error_code = outcome.code.clone();
        audit_request(out, conn, settings, id, result.model_sent, &outcome).await;
        if outcome.error.is_some() {
            return Provisioned {
                problem: Some(ensure_error(&committed, id, result.model_sent, &outcome)),
                result,
            };
        }
        if let Some(other) = outcome.agent_id.filter(|a| *a != id) {
            return Provisioned {
                result,
                problem: Some(Error::failed(format!(
                    "{committed}, but the platform answered for agent {other}, not {id}: the platform's agent is another row; check `orgctl status` before rerunning"
                ))),
            };
        }
        if outcome.provisioning == Some(false) {
            let prior = outcome.agent_status.as_deref().unwrap_or("unknown");
            let why = format!(
                "it answered '{}' with the agent {prior}",
                outcome.status.as_deref().unwrap_or("no status")
            );
            if prior == "online" {
                out.warn(&format!(
                    "the platform did not provision agent {id}: {why} (already running)"
                ));
            } else {
                return Provisioned {
                    result,
                    problem: Some(Error::failed(format!(
                        "{committed}, but the platform did not provision agent {id}: {why}; check the platform and rerun with --provision"
                    ))),
                };
            }
        } else {
            out.info(&format!(
                "Asked the platform to provision agent {id}{}.",
                if result.model_sent {
                    " (with the model, which it validated and set)"
                } else {
                    ""
                }
            ));
        }
    }
    let Some(wait) = wait else {
        return Provisioned {
            result,
            problem: None,
        };
    };
    let wait = wait.deadline(before.as_ref().and_then(|s| s.runtime.as_deref()));

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
                        result.last_error = s.last_error.as_deref().map(|e| shown(e, MESSAGE_MAX));
                        break Err(Error::failed(format!(
                            "{committed}, but the platform marked the agent {id} failed: {}",
                            match &result.last_error {
                                Some(e) => format!("its last error: {e}"),
                                None => "the platform recorded no reason (workspaces.last_sample_error is empty)".to_string(),
                            }
                        )))
                    }
                    Some("failed") => {}
                    // The platform puts it to sleep, or it is stopped: it will not come online
                    // by itself, so waiting longer cannot succeed.
                    Some(s @ ("hibernating" | "hibernated" | "paused" | "removed")) => {
                        break Err(Error::failed(format!(
                            "{committed}; the platform agent {id} is {s}, so it will not come online by itself: stopped waiting"
                        )))
                    }
                    // `provisioning`, `awaiting_agent` (booted, not yet registered), `offline`
                    // and `degraded` are on the way, or may be: keep watching.
                    _ => seen_other = true,
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(Error::failed(format!(
                "the platform agent {id} is still {} after waiting {}; {committed} and stays committed: check the platform, or wait longer with `orgctl status`",
                result.final_status.as_deref().unwrap_or("without a status"),
                crate::output::duration::human(wait)
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
    result.waited_ms = crate::output::duration::millis(start.elapsed());
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

    #[test]
    fn platform_strings_are_made_safe() {
        assert_eq!(shown("bad\u{1b}[31m model\n", 300), "bad [31m model");
        assert_eq!(shown("abcdef", 3), "abc…");
        assert_eq!(
            plain_code("RUNTIME_UNSUPPORTED").as_deref(),
            Some("RUNTIME_UNSUPPORTED")
        );
        assert_eq!(plain_code("x\u{1b}y"), None);
    }
}
