//! The HTTP side of a restart: POST the platform's admin restart route for each workspace, a
//! few at once, and classify each answer (restarted, noop, gone, failed, not attempted).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::{
    Platform, RESTART_CALL_TIMEOUT, RESTART_CONCURRENCY, RESTART_CONNECT_TIMEOUT,
    RESTART_GIVE_UP_AFTER,
};
use crate::error::{sanitize, Result};
use crate::output::Output;

const PROGRESS_MIN: usize = 10;

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
    let bearer = platform.bearer();
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

/// Which of the ids ($1) are rows of this tenant that are not `removed`.
pub(super) const LIVE_AMONG_SQL: &str =
    "SELECT id FROM workspaces WHERE id = ANY($1) AND status::text IS DISTINCT FROM 'removed'";

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
    let live: Vec<Uuid> = crate::db::query_scalar(LIVE_AMONG_SQL)
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

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
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
}
