//! Provisioning after a commit (the platform's ensure route, see [`crate::platform::provision`]): decide whether to ask, ask the platform (audited), and with
//! `--wait` watch the agent until it is online, failed, stopped, or the deadline passes.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::audit::Who;
use crate::db::{self, Settings};
use crate::error::{Error, Exit};
use crate::output::Output;
use crate::platform::provision::ensure::{ensure_error, shown};
use crate::platform::provision::{
    agent_state, decide, post_ensure, AgentState, Ask, EnsureOutcome, ProvisionResult, Provisioned,
    Stop, Wait, ENSURE_PATH, MESSAGE_MAX, POLL_INTERVAL, PROVISION_COMMAND,
};
use crate::platform::restart::Platform;

/// Record a provision request and its HTTP outcome as an audit row of its own, in a
/// transaction of its own (the install is committed already). A failure to record it is a
/// warning, never a change of the command's outcome. Never the model's value, only whether one
/// was sent. The row records `who`.
async fn audit_request(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    who: &Who,
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
        crate::audit::append_audit(&mut tx, who, &[entry]).await?;
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

/// Provision agent `id` after the commit of `what` (e.g. "the install"): decide, request,
/// and with `wait` watch the status. `conn` is free (its transaction committed). The request's
/// audit row records `who`.
#[allow(clippy::too_many_arguments)]
pub async fn provision(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    who: &Who,
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
    if let Some(reason) = decide(created, before.as_ref()) {
        result.skipped = Some(reason.to_string());
        let skip = Skipped {
            id,
            reason,
            before: before.as_ref(),
            model: ask.model.is_some(),
            waiting: wait.is_some(),
        };
        if let ControlFlow::Break(problem) = skip.outcome(out, &committed) {
            return Provisioned { result, problem };
        }
    } else if let Some(problem) = request(
        out,
        conn,
        settings,
        who,
        platform,
        id,
        ask,
        &committed,
        &mut result,
    )
    .await
    {
        return Provisioned {
            result,
            problem: Some(problem),
        };
    }
    let Some(wait) = wait else {
        return Provisioned {
            result,
            problem: None,
        };
    };
    let wait = wait.deadline(before.as_ref().and_then(|s| s.runtime.as_deref()));
    let start = Instant::now();
    let end = watch(
        out,
        conn,
        settings,
        id,
        wait,
        before.as_ref(),
        &mut stop,
        &committed,
        &mut result,
    )
    .await;
    result.waited_ms = crate::output::duration::millis(start.elapsed());
    Provisioned {
        result,
        problem: end.err(),
    }
}

/// An agent orgctl does not ask the platform to provision, and why.
struct Skipped<'a> {
    id: Uuid,
    /// What [`decide`] said.
    reason: &'static str,
    before: Option<&'a AgentState>,
    /// A model was to be sent with the request.
    model: bool,
    /// `--wait` was given.
    waiting: bool,
}

impl Skipped<'_> {
    /// What the skip comes to: stop here with this problem (or none), or go on and watch an
    /// agent the platform is starting already.
    fn outcome(&self, out: &Output, committed: &str) -> ControlFlow<Option<Error>> {
        let id = self.id;
        let words = skip_words(self.reason, self.before);
        // The platform is starting it already: watch it like any other.
        let starting = matches!(self.reason, "provisioning" | "awaiting_agent");
        let problem = match self.reason {
            "online" | "degraded" => None,
            _ if self.model => Some(Error::refused(format!(
                "{committed}; the platform agent {id} is {words}: orgctl does not ask the platform to provision it, so the model was not sent and MODEL was not set"
            ))),
            _ if starting => None,
            _ if self.waiting => Some(Error::failed(format!(
                "{committed}; the platform agent {id} is {words}: orgctl does not provision it, so it cannot come online"
            ))),
            _ => {
                out.warn(&format!(
                    "the platform agent {id} was not provisioned: it is {words}"
                ));
                None
            }
        };
        if problem.is_some() || !starting || !self.waiting {
            ControlFlow::Break(problem)
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Ask the platform to provision agent `id` (one ensure call, audited) and record its answer
/// in `result`; the problem that ends the provisioning here, if any.
#[allow(clippy::too_many_arguments)]
async fn request(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    who: &Who,
    platform: &Platform,
    id: Uuid,
    ask: Ask<'_>,
    committed: &str,
    result: &mut ProvisionResult,
) -> Option<Error> {
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
    audit_request(out, conn, settings, who, id, result.model_sent, &outcome).await;
    if outcome.error.is_some() {
        return Some(ensure_error(committed, id, result.model_sent, &outcome));
    }
    if let Some(other) = outcome.agent_id.filter(|a| *a != id) {
        return Some(Error::failed(format!(
            "{committed}, but the platform answered for agent {other}, not {id}: the platform's agent is another row; check `orgctl status` before rerunning"
        )));
    }
    if outcome.provisioning == Some(false) {
        let prior = outcome.agent_status.as_deref().unwrap_or("unknown");
        let why = format!(
            "it answered '{}' with the agent {prior}",
            outcome.status.as_deref().unwrap_or("no status")
        );
        if prior != "online" {
            return Some(Error::failed(format!(
                "{committed}, but the platform did not provision agent {id}: {why}; check the platform and rerun with --provision"
            )));
        }
        out.warn(&format!(
            "the platform did not provision agent {id}: {why} (already running)"
        ));
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
    None
}

/// Watch agent `id`, read-only, about once a second, for up to `wait`: Ok when it is online,
/// else why the wait ended (failed, stopped, gone, unreadable, the deadline, Ctrl-C).
#[allow(clippy::too_many_arguments)]
async fn watch(
    out: &Output,
    conn: &mut PgConnection,
    settings: &Settings,
    id: Uuid,
    wait: Duration,
    before: Option<&AgentState>,
    stop: &mut Stop,
    committed: &str,
    result: &mut ProvisionResult,
) -> Result<(), Error> {
    let deadline = Instant::now() + wait;
    let spinner = out.spinner(&format!("waiting for agent {id} to come online"));
    let prior_failed = before.and_then(|s| s.status.as_deref()) == Some("failed");
    let prior_updated = before.and_then(|s| s.updated_at);
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
            _ = &mut *stop => {
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
    end
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
