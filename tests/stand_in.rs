//! A platform HTTP stand-in with the platform's real range of answers, on 127.0.0.1
//! only: 2xx other than 200, redirects, 401/404/409/500, slow and hung answers, and keep-alive
//! connections the server closes. It records every request (method, path, bearer, when it
//! arrived and when it was answered) and how many were in flight at once, so tests can check
//! the concurrency cap, the timeouts and that a Ctrl-C starts no new call.
//!
//! [`PlatformSim`] answers the platform's admin restart route as the platform does, from the
//! tenant's own rows (eligibility, debounce, 404).
//!
//! Shared by the test modules that talk to a platform (keep new behaviours here, not in a
//! module's private stand-in).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// At most this many restart calls in flight at once (README, "secret": orgctl's restart
/// concurrency). Written out rather than imported, so a move of the constant inside orgctl
/// does not silently move the test's expectation.
pub const RESTART_CAP: usize = 8;

/// How the stand-in answers a request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status with a small body (`200 OK` and the like; the reason phrase is derived).
    Status(u16),
    /// A redirect (301/302/307/308) to `location`.
    Redirect(u16, String),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Read the request and never answer (until the stand-in is dropped).
    Hang,
    /// This status with this body (the platform's JSON answers).
    Json(u16, String),
    /// Answer as the platform's admin restart route does ([`PlatformSim`]).
    Platform(Arc<PlatformSim>),
}

impl Reply {
    /// The admin restart route's answer when it restarts: 202 `{"status":"restart_dispatched"}`.
    pub fn dispatched() -> Reply {
        Reply::Json(202, r#"{"status":"restart_dispatched"}"#.to_string())
    }

    /// The admin restart route's answer when it does nothing: 200 `{"status":"noop"}`.
    pub fn noop() -> Reply {
        Reply::Json(200, r#"{"status":"noop"}"#.to_string())
    }
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub arrived: Instant,
    pub answered: Option<Instant>,
    /// Which TCP connection carried it (0, 1, …): tells keep-alive reuse apart.
    pub conn: usize,
}

struct State {
    rules: Vec<(String, Reply)>,
    default: Reply,
    /// After each answer, how long an idle keep-alive connection is kept before the server
    /// closes it (`None`: `Connection: close` on every answer).
    keep_alive: Option<Duration>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    conns: AtomicUsize,
    stop: AtomicBool,
}

pub struct StandIn {
    addr: SocketAddr,
    state: Arc<State>,
    handle: Option<JoinHandle<()>>,
}

pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

impl StandIn {
    /// Answer `default` to everything, `Connection: close`.
    pub fn start(default: Reply) -> Self {
        Self::with(Vec::new(), default, None)
    }

    /// Answer the first rule whose needle the request path contains, else `default`.
    /// `keep_alive`: keep connections open for that long after each answer, then close them
    /// from the server side (as a load balancer's idle timeout does).
    pub fn with(rules: Vec<(String, Reply)>, default: Reply, keep_alive: Option<Duration>) -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let state = Arc::new(State {
            rules,
            default,
            keep_alive,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let n = st.conns.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || serve(stream, n, &st));
            }
        });
        StandIn {
            addr,
            state,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        match self.state.calls.lock() {
            Ok(c) => c.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The most requests that were in flight (arrived, not yet answered) at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.conns.load(Ordering::SeqCst)
    }

    /// The workspace id of a `POST /admin/workspaces/{id}/restart` call (the platform's admin
    /// restart route), checking its shape and bearer.
    #[track_caller]
    pub fn admin_restart_id(c: &Call, bearer: &str) -> String {
        assert_eq!(c.method, "POST", "{c:?}");
        assert_eq!(
            c.auth.as_deref(),
            Some(format!("Bearer {bearer}").as_str()),
            "{c:?}"
        );
        match admin_restart_path_id(&c.path) {
            Some(id) => id.to_string(),
            None => panic!("not the admin restart route: {}", c.path),
        }
    }

    /// The workspace id of a `POST /workspaces/{id}/restart` call, checking its shape and
    /// bearer.
    #[track_caller]
    pub fn restart_id(c: &Call, bearer: &str) -> String {
        assert_eq!(c.method, "POST", "{c:?}");
        assert_eq!(
            c.auth.as_deref(),
            Some(format!("Bearer {bearer}").as_str()),
            "{c:?}"
        );
        match c
            .path
            .strip_prefix("/workspaces/")
            .and_then(|p| p.strip_suffix("/restart"))
        {
            Some(id) => id.to_string(),
            None => panic!("unexpected path {}", c.path),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One request as read off the wire.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Read one request head and body (what `buf` holds first, then the stream), leaving in `buf`
/// what follows it (keep-alive); None when the peer closed or went quiet.
pub fn read_http_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + length]).to_string();
    buf.drain(..body_start + length);
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Method, path and bearer of the next request ([`read_http_request`]).
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Option<String>)> {
    let r = read_http_request(stream, buf)?;
    let auth = r.header("authorization");
    Some((r.method, r.path, auth))
}

fn serve(mut stream: TcpStream, conn: usize, st: &State) {
    let mut buf = Vec::new();
    loop {
        let _ = stream.set_read_timeout(Some(st.keep_alive.unwrap_or(Duration::from_secs(5))));
        let Some((method, path, auth)) = read_request(&mut stream, &mut buf) else {
            // Idle past the keep-alive (or the client closed): the server closes.
            return;
        };
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let index = match st.calls.lock() {
            Ok(mut c) => {
                c.push(Call {
                    method,
                    path: path.clone(),
                    auth: auth.clone(),
                    arrived: Instant::now(),
                    answered: None,
                    conn,
                });
                c.len() - 1
            }
            Err(_) => return,
        };
        let mut reply = st
            .rules
            .iter()
            .find(|(needle, _)| path.contains(needle.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| st.default.clone());
        loop {
            match reply {
                Reply::Delay(d, next) => {
                    std::thread::sleep(d);
                    reply = *next;
                }
                Reply::Platform(sim) => {
                    reply = sim.answer(&method_of(&st.calls, index), &path, auth.as_deref());
                }
                Reply::Hang => {
                    while !st.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    st.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                _ => break,
            }
        }
        let (code, extra, body) = match reply {
            Reply::Status(code) if code == 204 => (code, String::new(), String::new()),
            Reply::Status(code) if code < 300 => (
                code,
                String::new(),
                "{\"status\":\"restarting\"}".to_string(),
            ),
            // An error body that echoes the bearer, so tests prove orgctl masks it.
            Reply::Status(code) => (
                code,
                String::new(),
                format!(
                    "restart refused for request with {}",
                    auth.clone().unwrap_or_default()
                ),
            ),
            Reply::Redirect(code, location) => (
                code,
                format!("Location: {location}{path}\r\n"),
                String::new(),
            ),
            Reply::Json(code, body) => (code, String::new(), body),
            Reply::Delay(..) | Reply::Hang | Reply::Platform(_) => {
                unreachable!("resolved above")
            }
        };
        let connection = if st.keep_alive.is_some() {
            "keep-alive"
        } else {
            "close"
        };
        let resp = format!(
            "HTTP/1.1 {code} {}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            reason(code),
            body.len()
        );
        // Counted out before the answer is written: once the client has it, it may send its
        // next call at once, and a thread descheduled after the write would count both.
        if let Ok(mut c) = st.calls.lock() {
            if let Some(call) = c.get_mut(index) {
                call.answered = Some(Instant::now());
            }
        }
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.write_all(resp.as_bytes());
        if st.keep_alive.is_none() {
            return;
        }
    }
}

/// The method of the recorded call at `index`.
fn method_of(calls: &Mutex<Vec<Call>>, index: usize) -> String {
    match calls.lock() {
        Ok(c) => c.get(index).map(|c| c.method.clone()).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `{id}` of `/admin/workspaces/{id}/restart`.
pub fn admin_restart_path_id(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/workspaces/")
        .and_then(|p| p.strip_suffix("/restart"))
}

// ---------------------------------------------------------------------------------------------
// The platform's admin restart route, as the platform answers it

/// `POST /admin/workspaces/{id}/restart` as the platform answers it, reading the tenant's
/// database: 401 without the admin bearer; 404 for a workspace it does not have (no row, or
/// `removed`); 200 `{"status":"noop"}` for one its eligibility excludes (NULL status, `paused`,
/// `hibernated`, runtime `external`/`kimi`/`kimi-cli`/`mock` with NULL read as `langgraph`, a
/// `paused` ancestor) and for one it restarted within its debounce (which also coalesces
/// concurrent calls); else 202 `{"status":"restart_dispatched"}`. Any other path is 404 (a
/// router without the route), so a call to the manual route shows.
pub struct PlatformSim {
    db: String,
    token: String,
    debounce: Duration,
    /// When each workspace was last restarted (by id).
    restarted: Mutex<std::collections::HashMap<String, Instant>>,
    /// Workspaces removed just before their call is answered (a concurrent removal).
    remove_on_call: Mutex<Vec<String>>,
}

impl std::fmt::Debug for PlatformSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlatformSim({})", self.db)
    }
}

impl PlatformSim {
    /// The platform of test database `db` (its name), accepting `token` as the admin bearer,
    /// with the platform's 60 s debounce.
    pub fn new(db: &str, token: &str) -> Arc<Self> {
        Arc::new(PlatformSim {
            db: db.to_string(),
            token: token.to_string(),
            debounce: Duration::from_secs(60),
            restarted: Mutex::new(Default::default()),
            remove_on_call: Mutex::new(Vec::new()),
        })
    }

    /// Record `id` as restarted just now (its next call within the debounce is a no-op).
    pub fn mark_restarted(&self, id: &str) {
        if let Ok(mut r) = self.restarted.lock() {
            r.insert(id.to_string(), Instant::now());
        }
    }

    /// Mark `id` removed in the tenant when its call arrives, then answer as the platform does.
    pub fn remove_on_call(&self, id: &str) {
        if let Ok(mut r) = self.remove_on_call.lock() {
            r.push(id.to_string());
        }
    }

    /// The workspaces the platform restarted (answered 202), sorted.
    pub fn restarted(&self) -> Vec<String> {
        let mut v: Vec<String> = match self.restarted.lock() {
            Ok(r) => r.keys().cloned().collect(),
            Err(e) => panic!("{e}"),
        };
        v.sort();
        v
    }

    fn answer(&self, method: &str, path: &str, auth: Option<&str>) -> Reply {
        let json = |code: u16, body: &str| Reply::Json(code, body.to_string());
        let Some(id) = admin_restart_path_id(path) else {
            return Reply::Json(404, "404 page not found".to_string());
        };
        if method != "POST" {
            return json(405, r#"{"error":"method not allowed"}"#);
        }
        if auth != Some(format!("Bearer {}", self.token).as_str()) {
            return json(401, r#"{"error":"admin token required"}"#);
        }
        if uuid::Uuid::parse_str(id).is_err() {
            return json(400, r#"{"error":"invalid workspace id"}"#);
        }
        let remove = self
            .remove_on_call
            .lock()
            .map(|r| r.iter().any(|x| x == id))
            .unwrap_or(false);
        if remove {
            if let Err(e) = crate::harness::server().psql(
                &self.db,
                &format!("UPDATE workspaces SET status = 'removed' WHERE id = '{id}'"),
            ) {
                return json(500, &format!("{{\"error\":\"{}\"}}", e.trim()));
            }
        }
        let sql = format!(
            "WITH RECURSIVE up(id, steps) AS (
                 SELECT parent_id, 1 FROM workspaces WHERE id = '{id}' AND parent_id IS NOT NULL
               UNION ALL
                 SELECT w.parent_id, u.steps + 1 FROM up u JOIN workspaces w ON w.id = u.id
                  WHERE w.parent_id IS NOT NULL AND u.steps < 64)
             SELECT COALESCE(status::text, '<null>') || '|' || COALESCE(runtime, 'langgraph')
                    || '|' || EXISTS (SELECT 1 FROM up JOIN workspaces a ON a.id = up.id
                                       WHERE a.status::text = 'paused')
               FROM workspaces WHERE id = '{id}'"
        );
        let row = match crate::harness::server().psql(&self.db, &sql) {
            Ok(r) => r.trim().to_string(),
            Err(_) => return json(500, r#"{"error":"lookup failed"}"#),
        };
        let parts: Vec<&str> = row.split('|').collect();
        let [status, runtime, paused_above] = parts[..] else {
            return json(404, r#"{"error":"workspace not found"}"#);
        };
        if status == "removed" {
            return json(404, r#"{"error":"workspace not found"}"#);
        }
        let ineligible = matches!(status, "<null>" | "paused" | "hibernated")
            || matches!(runtime, "external" | "kimi" | "kimi-cli" | "mock")
            || paused_above == "t";
        if ineligible {
            return Reply::noop();
        }
        let mut restarted = match self.restarted.lock() {
            Ok(r) => r,
            Err(_) => return json(500, r#"{"error":"internal"}"#),
        };
        if restarted
            .get(id)
            .is_some_and(|at| at.elapsed() < self.debounce)
        {
            return Reply::noop();
        }
        restarted.insert(id.to_string(), Instant::now());
        Reply::dispatched()
    }
}

// ---------------------------------------------------------------------------------------------
// The platform's ensure route, as the platform answers it, against a tenant database.
//
// `POST /admin/org/platform-agent/ensure` (admin bearer; body `{}` or `{"model": M}`; header
// `X-Molecule-Org-Id` required when the stand-in plays a tenant server addressed directly).
// Like the platform it validates the model for the agent's runtime (422 with `error` and
// `code`), writes MODEL (the given model, or seeds [`ENSURE_DEFAULT_MODEL`] when none is set),
// and answers `exists` with `provisioning: false` for an online agent; otherwise it starts a
// restart (`status 'provisioning'`, `url ''`), answers 200 `repaired`, and moves the agent on
// as its mode says. Any other path answers 404. Every request is recorded with its headers and
// body.

/// The model the stand-in seeds when the agent has no MODEL (the platform's default).
pub const ENSURE_DEFAULT_MODEL: &str = "platform-default-model";
/// The models the stand-in accepts for the `hermes` runtime; every other is refused with 422
/// `UNREGISTERED_MODEL_FOR_RUNTIME`. Any runtime other than `hermes` and `langgraph` is refused
/// with 422 `RUNTIME_UNSUPPORTED`.
pub const HERMES_MODELS: &[&str] = &["m", "m-1", "hermes-model-2"];
/// The reason the stand-in records in `last_sample_error` in [`EnsureMode::Fail`].
pub const ENSURE_FAIL_REASON: &str = "register: model provider rejected the API key";

/// What the agent does after a 200 that started provisioning.
#[derive(Clone, Debug)]
pub enum EnsureMode {
    /// Comes `online` after the delay.
    Live(Duration),
    /// Goes `awaiting_agent` after the first delay, `online` after the second.
    Awaiting(Duration, Duration),
    /// Is marked `failed` with [`ENSURE_FAIL_REASON`] after the delay.
    Fail(Duration),
    /// Stays `provisioning`.
    Stuck,
    /// Goes `hibernating` after the delay.
    Hibernate(Duration),
    /// Answers this status with a JSON `{"error","code"}` body (the error echoes the bearer, so
    /// tests prove orgctl never shows it) and changes nothing.
    Answer(u16, &'static str),
    /// Answers 200 with `provisioning: false` (status `exists`) and changes nothing.
    NotProvisioning,
    /// Never answers.
    Hang,
}

/// One ensure request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct EnsureCall {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub org_id: Option<String>,
    pub body: String,
}

pub struct EnsureStandIn {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<EnsureCall>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EnsureStandIn {
    /// A platform in front of database `db`; `require_org`: a tenant server addressed directly
    /// (400 `TENANT_ORG_HEADER_REQUIRED` without the org header).
    pub fn start(db: &str, mode: EnsureMode, require_org: bool) -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, db) = (calls.clone(), stop.clone(), db.to_string());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (c, s, db, mode) = (c.clone(), s.clone(), db.clone(), mode.clone());
                std::thread::spawn(move || ensure_serve(stream, &c, &s, &db, mode, require_org));
            }
        });
        EnsureStandIn {
            addr,
            calls,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<EnsureCall> {
        match self.calls.lock() {
            Ok(c) => c.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Exactly one well-formed ensure request, with this bearer; returns it.
    #[track_caller]
    pub fn one_ensure(&self, bearer: &str) -> EnsureCall {
        let calls = self.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let c = calls[0].clone();
        assert_eq!(c.method, "POST", "{c:?}");
        assert_eq!(c.path, "/admin/org/platform-agent/ensure", "{c:?}");
        assert_eq!(
            c.auth.as_deref(),
            Some(format!("Bearer {bearer}").as_str()),
            "{c:?}"
        );
        c
    }
}

impl Drop for EnsureStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn ensure_respond(stream: &mut TcpStream, code: u16, body: &str) {
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            reason(code),
            body.len()
        )
        .as_bytes(),
    );
}

fn ensure_serve(
    mut stream: TcpStream,
    calls: &Mutex<Vec<EnsureCall>>,
    stop: &AtomicBool,
    db: &str,
    mode: EnsureMode,
    require_org: bool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let Some(req) = read_http_request(&mut stream, &mut buf) else {
        return;
    };
    let (auth, org_id) = (req.header("authorization"), req.header("x-molecule-org-id"));
    let Request {
        method, path, body, ..
    } = req;
    if let Ok(mut c) = calls.lock() {
        c.push(EnsureCall {
            method: method.clone(),
            path: path.clone(),
            auth: auth.clone(),
            org_id: org_id.clone(),
            body: body.clone(),
        });
    }
    if method != "POST" || path != "/admin/org/platform-agent/ensure" {
        return ensure_respond(&mut stream, 404, r#"{"error":"not found"}"#);
    }
    if require_org && org_id.is_none() {
        return ensure_respond(
            &mut stream,
            400,
            r#"{"error":"tenant requests need the org header","code":"TENANT_ORG_HEADER_REQUIRED"}"#,
        );
    }
    let parsed: serde_json::Value =
        match serde_json::from_str(if body.is_empty() { "{}" } else { &body }) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => return ensure_respond(&mut stream, 400, r#"{"error":"invalid body"}"#),
        };
    match mode {
        EnsureMode::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        EnsureMode::Answer(code, c) => {
            let b = serde_json::json!({
                "error": format!("ensure failed for {}", auth.unwrap_or_default()),
                "code": c,
            });
            return ensure_respond(&mut stream, code, &b.to_string());
        }
        _ => {}
    }
    let sql = |q: &str| match crate::harness::server().psql(db, q) {
        Ok(s) => s.trim().to_string(),
        Err(e) => panic!("stand-in SQL failed: {e}\n{q}"),
    };
    let row = sql(
        "SELECT id || '|' || COALESCE(status::text, '') || '|' || COALESCE(runtime, '')
           FROM workspaces WHERE kind = 'platform'",
    );
    let mut parts = row.split('|');
    let (Some(id), Some(prior), Some(runtime)) = (parts.next(), parts.next(), parts.next()) else {
        return ensure_respond(&mut stream, 500, r#"{"error":"lookup failed"}"#);
    };
    // Only a UUID ever reaches the SQL below.
    let Ok(id) = uuid::Uuid::parse_str(id) else {
        return ensure_respond(&mut stream, 500, r#"{"error":"lookup failed"}"#);
    };
    let model = parsed
        .get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    if let Some(m) = &model {
        let refusal = match runtime {
            "hermes" if !HERMES_MODELS.contains(&m.as_str()) => Some((
                "UNREGISTERED_MODEL_FOR_RUNTIME",
                // Control characters in the message: orgctl must not pass them to a terminal.
                format!("model \u{1b}[31m{m}\u{1b}[0m is not registered\nfor runtime hermes"),
            )),
            "hermes" | "langgraph" => None,
            other => Some((
                "RUNTIME_UNSUPPORTED",
                format!("runtime {other} does not take a model"),
            )),
        };
        if let Some((code, error)) = refusal {
            let b = serde_json::json!({ "error": error, "code": code });
            return ensure_respond(&mut stream, 422, &b.to_string());
        }
    }
    let answer = |status: &str, provisioning: bool| {
        serde_json::json!({
            "status": status,
            "platform_agent_id": id.to_string(),
            "kind": "platform",
            "agent_status": prior,
            "provisioning": provisioning,
        })
        .to_string()
    };
    if prior == "online" || matches!(mode, EnsureMode::NotProvisioning) {
        return ensure_respond(&mut stream, 200, &answer("exists", false));
    }
    // MODEL: the given model, else the platform's default when none is set (plain, version 0).
    let value = model.unwrap_or_else(|| ENSURE_DEFAULT_MODEL.to_string());
    let overwrite = if parsed.get("model").is_some() {
        "DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, encryption_version = 0"
    } else {
        "DO NOTHING"
    };
    sql(&format!(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
         VALUES ('{id}', 'MODEL', convert_to($m${value}$m$, 'UTF8'), 0)
         ON CONFLICT (workspace_id, key) {overwrite}"
    ));
    let set = |status: &str, extra: &str| {
        sql(&format!(
            "UPDATE workspaces SET status = '{status}', updated_at = clock_timestamp(){extra}
              WHERE id = '{id}'"
        ));
    };
    set("provisioning", ", url = ''");
    ensure_respond(&mut stream, 200, &answer("repaired", true));
    match mode {
        EnsureMode::Live(d) => {
            std::thread::sleep(d);
            set("online", ", url = 'http://agent.internal:8000'");
        }
        EnsureMode::Awaiting(a, b) => {
            std::thread::sleep(a);
            set("awaiting_agent", "");
            std::thread::sleep(b);
            set("online", ", url = 'http://agent.internal:8000'");
        }
        EnsureMode::Fail(d) => {
            std::thread::sleep(d);
            set(
                "failed",
                &format!(", last_sample_error = '{ENSURE_FAIL_REASON}'"),
            );
        }
        EnsureMode::Hibernate(d) => {
            std::thread::sleep(d);
            set("hibernating", "");
        }
        _ => {}
    }
}
