//! The platform's ensure call: one POST of its install-and-provision route, and what its
//! answer means (accepted, refused with a code, failed), said after the commit it follows.

use uuid::Uuid;

use super::{Ask, Platform, ENSURE_PATH, MESSAGE_MAX, ORG_HEADER, ORG_HEADER_REQUIRED};
use crate::error::{sanitize, Error};

/// At most this much of an answer's body is read.
const BODY_MAX: u64 = 64 * 1024;

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
pub(crate) fn shown(s: &str, max: usize) -> String {
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
    let agent = crate::platform::restart::api_client().build();
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

/// The error of a refused or failed ensure call, after the commit of `committed`.
pub(crate) fn ensure_error(
    committed: &str,
    id: Uuid,
    model_sent: bool,
    o: &EnsureOutcome,
) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

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
