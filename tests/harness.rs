//! The test harness: one real PostgreSQL per test binary, started from the installed server
//! binaries (as the `postgres` user when we are root), data in /dev/shm with fsync off;
//! template databases (empty platform schema, and the sample org); one fresh database per test
//! (`CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY`, ~10 ms). The server is stopped at exit
//! (atexit) and dies with the test process (PR_SET_PDEATHSIG, set from a thread that never
//! exits).
#![allow(unsafe_code, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use orgctl::testing::pgserver::{self, RunAs};
use sqlx::postgres::PgConnection;
use sqlx::Connection;

pub const PASSWORD: &str = "t3st-Pa55w0rd!";
pub const TEMPLATE_EMPTY: &str = "orgctl_tmpl_empty";
pub const TEMPLATE_SAMPLE: &str = "orgctl_tmpl_sample";
pub const TEMPLATE_SAMPLE_TEXT_STATUS: &str = "orgctl_tmpl_sample_text";

pub struct Server {
    pub port: u16,
    pub base: PathBuf,
    pub bindir: PathBuf,
    pub pid: u32,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn server() -> &'static Server {
    SERVER.get_or_init(|| match start() {
        Ok(s) => s,
        Err(e) => panic!("could not start the test PostgreSQL: {e}"),
    })
}

extern "C" fn stop_at_exit() {
    if let Some(s) = SERVER.get() {
        // SIGQUIT: immediate shutdown; the data directory is thrown away anyway.
        orgctl::testing::sys::kill(s.pid as i32, libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while orgctl::testing::sys::kill(s.pid as i32, 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&s.base);
    }
}

fn shm_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Remove data directories of earlier test runs whose process is gone (killed with -9).
fn clean_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix("orgctl-test-") {
            if let Ok(pid) = pid.parse::<i32>() {
                if !orgctl::testing::sys::kill(pid, 0) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

fn start() -> Result<Server, String> {
    let bindir = pgserver::bindir().map_err(|e| e.message)?;
    let run_as = RunAs::detect().map_err(|e| e.message)?;
    let root = shm_root();
    clean_stale(&root);
    let base = root.join(format!("orgctl-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let data = base.join("data");
    pgserver::initdb(&bindir, &data, run_as, Some(PASSWORD)).map_err(|e| e.message)?;
    let port = pgserver::free_port().map_err(|e| e.message)?;
    pgserver::configure(&data, port, true).map_err(|e| e.message)?;

    // Spawn from a thread that never exits: PR_SET_PDEATHSIG fires when the spawning *thread*
    // dies, and test threads come and go.
    let (tx, rx) = std::sync::mpsc::channel();
    let (b2, d2) = (bindir.clone(), data.clone());
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut cmd = run_as.command(&b2.join("postgres"));
        cmd.arg("-D")
            .arg(&d2)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match std::fs::File::create(d2.with_extension("log")) {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(_) => {
                cmd.stderr(Stdio::null());
            }
        }
        unsafe {
            cmd.pre_exec(orgctl::testing::sys::set_parent_death_signal);
        }
        let _ = tx.send(cmd.spawn().map(|c| c.id()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    let pid = rx
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("could not spawn postgres: {e}"))?;
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let server = Server {
        port,
        base,
        bindir,
        pid,
    };
    // Wait for it to accept connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = server
            .psql("postgres", "SELECT 1")
            .map(|_| true)
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            return Err(format!("postgres did not come up: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let schema = orgctl::testing::db::PLATFORM_SCHEMA_SQL;
    let sample = orgctl::testing::dev::SAMPLE_ORG_SQL;
    let legacy = orgctl::testing::db::PLATFORM_LEGACY_TEXT_STATUS_SQL;
    for (tmpl, sqls) in [
        (TEMPLATE_EMPTY, vec![schema]),
        (TEMPLATE_SAMPLE, vec![schema, sample]),
        (TEMPLATE_SAMPLE_TEXT_STATUS, vec![schema, legacy, sample]),
    ] {
        server.psql("postgres", &format!("CREATE DATABASE {tmpl}"))?;
        server.psql(
            "postgres",
            &format!(
                "COMMENT ON DATABASE {tmpl} IS '{}'",
                orgctl::testing::dev::DEV_COMMENT
            ),
        )?;
        for sql in sqls {
            server.psql(tmpl, sql)?;
        }
    }
    Ok(server)
}

impl Server {
    /// Run SQL through psql (sync; for set-up only). Returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_at(&self.bindir, self.port, db, sql)
    }

    pub fn url(&self, db: &str) -> String {
        url_at(self.port, db)
    }
}

/// Run SQL through psql on a loopback server of the harness (SQL on stdin, so a script of
/// several statements works). Returns stdout.
pub fn psql_at(bindir: &Path, port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bindir.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(sql.as_bytes())?;
            }
            child.wait_with_output()
        })
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The URL of a database on a loopback server of the harness.
pub fn url_at(port: u16, db: &str) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{port}/{db}",
        urlencode(PASSWORD)
    )
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A fresh database for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// The platform schema with no rows.
    pub fn empty() -> Self {
        Self::from_template(TEMPLATE_EMPTY)
    }

    /// The sample org of `orgctl dev up` (src/sql/sample_org.sql).
    pub fn sample() -> Self {
        Self::from_template(TEMPLATE_SAMPLE)
    }

    /// The sample org on an older tenant's schema: `workspaces.status` is TEXT.
    pub fn sample_text_status() -> Self {
        Self::from_template(TEMPLATE_SAMPLE_TEXT_STATUS)
    }

    fn from_template(tmpl: &str) -> Self {
        let s = server();
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        if let Err(e) = s.psql(
            "postgres",
            &format!("CREATE DATABASE {name} TEMPLATE {tmpl} STRATEGY FILE_COPY"),
        ) {
            panic!("CREATE DATABASE {name}: {e}");
        }
        TestDb {
            url: s.url(&name),
            name,
        }
    }

    /// This database as an older tenant, before the platform kept its agent at the root, allowed
    /// only one per database and made `kind` NOT NULL: orgctl's own guards for such tenants are
    /// tested on it.
    pub fn before_platform_constraints(self) -> Self {
        self.exec(
            "DROP INDEX uniq_workspaces_one_platform_root;
             ALTER TABLE workspaces DROP CONSTRAINT workspaces_platform_root_check;
             ALTER TABLE workspaces ALTER COLUMN kind DROP NOT NULL;",
        );
        self
    }

    /// A fresh database copied from this one (which must have no open connections): build an
    /// expensive fixture once, then give each test its own copy.
    pub fn copy_of(&self) -> Self {
        Self::from_template(&self.name)
    }

    /// Run SQL as set-up (panics on error).
    pub fn exec(&self, sql: &str) -> String {
        match server().psql(&self.name, sql) {
            Ok(s) => s,
            Err(e) => panic!("set-up SQL failed: {e}\n{sql}"),
        }
    }

    /// One value as text.
    pub fn scalar(&self, sql: &str) -> String {
        self.exec(sql).trim().to_string()
    }

    pub async fn connect(&self) -> PgConnection {
        match PgConnection::connect(&self.url).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// Every platform table's full contents, sorted, plus whether orgctl's schema exists: equal
    /// snapshots mean nothing changed.
    pub fn snapshot(&self) -> String {
        // Every table of the platform's schema, found in the catalog (the real schema has ~40),
        // so a write to any of them shows.
        let tables = self.exec(
            "SELECT string_agg(quote_ident(relname), ' ' ORDER BY relname) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
        );
        // One psql call: every table's rows sorted, then whether orgctl's schema exists.
        let parts: Vec<String> = tables
            .split_whitespace()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "SELECT {i}, '== {t}' || E'\\n' || coalesce((SELECT string_agg(x::text, E'\\n' ORDER BY x::text) FROM {t} x), '')"
                )
            })
            .collect();
        let sql = format!(
            "SELECT string_agg(s, E'\\n' ORDER BY n) FROM ({} UNION ALL SELECT 999, '== orgctl' || E'\\n' || CASE WHEN to_regclass('orgctl.audit_log') IS NULL THEN 'absent' ELSE 'present' END) q(n, s)",
            parts.join(" UNION ALL ")
        );
        self.exec(&sql)
    }

    pub fn audit_rows(&self) -> i64 {
        let exists = self.scalar("SELECT to_regclass('orgctl.audit_log') IS NOT NULL");
        if exists != "t" {
            return 0;
        }
        self.scalar("SELECT count(*) FROM orgctl.audit_log")
            .parse()
            .unwrap_or(-1)
    }

    /// orgctl against this database.
    pub fn orgctl(&self, args: &[&str]) -> Cmd {
        Cmd::new(args).env("DATABASE_URL", &self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = server().psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The org id every command of the harness has by default (`MOLECULE_ORG_ID`).
pub const TEST_ORG_ID: &str = "test-org-0001";
/// The platform's agent id for [`TEST_ORG_ID`], computed independently with python3:
/// `uuid.uuid5(uuid.NAMESPACE_URL, "molecule-platform-agent:test-org-0001")`.
pub const TEST_AGENT_ID: &str = "cd9f70ff-2c3d-5f8b-b64c-96bb7a68a687";

/// The orgctl binary in a cleaned environment.
pub struct Cmd {
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    cwd: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }

    /// Assert the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// An error is exactly one line on stderr starting with "error: ".
    #[track_caller]
    pub fn one_line_error(&self, needle: &str) -> &Self {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", self.stderr);
        assert!(
            lines[0].contains(needle),
            "error should mention {needle:?}: {}",
            lines[0]
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

impl Cmd {
    /// Every command runs with `MOLECULE_ORG_ID` = [`TEST_ORG_ID`], as on a tenant of the
    /// control plane, so an install creates the platform's id for it ([`TEST_AGENT_ID`]);
    /// [`Cmd::env_remove`] takes it away.
    pub fn new(args: &[&str]) -> Self {
        Cmd {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("MOLECULE_ORG_ID".into(), TEST_ORG_ID.into())],
            stdin: None,
            cwd: None,
        }
    }

    /// Run without this variable (one the harness sets by default, or one set before).
    pub fn env_remove(mut self, k: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self
    }

    /// Run from this working directory.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orgctl"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd
    }

    pub fn run(&self) -> Run {
        let mut cmd = self.command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = cmd.spawn().and_then(|mut child| {
            if let Some(data) = &self.stdin {
                use std::io::Write;
                if let Some(mut si) = child.stdin.take() {
                    // A command that refuses before reading its stdin may exit first: the
                    // write then meets a closed pipe, which is its answer, not a harness error.
                    match si.write_all(data) {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                        _ => {}
                    }
                }
            }
            child.wait_with_output()
        });
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("could not run orgctl: {e}"),
        };
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Run on a pseudo-terminal (util-linux `script`), which reports a 0x0 size: stdin, stdout
    /// and stderr are all the terminal, so both streams arrive merged in `stdout`. `input` is
    /// typed on the terminal.
    pub fn run_in_pty(&self, input: &str) -> Run {
        let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_orgctl").to_string())
            .chain(self.args.iter().cloned())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let mut inner = self.command();
        let mut cmd = Command::new("script");
        cmd.env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let _ = &mut inner;
        cmd.args(["-qec", &quoted.join(" "), "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.spawn().and_then(|mut child| {
            if let Some(mut si) = child.stdin.take() {
                use std::io::Write;
                std::thread::sleep(Duration::from_millis(300));
                // The command may be done before anything is typed (a refusal): not an error.
                let _ = si.write_all(input.as_bytes());
            }
            child.wait_with_output()
        });
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("could not run script: {e}"),
        };
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).replace('\r', ""),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Run on a blocking thread, for tests that do other work meanwhile.
    pub async fn run_async(self) -> Run {
        match tokio::task::spawn_blocking(move || self.run()).await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The sample org's ids.
pub mod ids {
    pub const HQ: &str = "a0000000-0000-4000-8000-000000000001";
    pub const RESEARCH: &str = "a0000000-0000-4000-8000-000000000002";
    pub const LABS: &str = "b0000000-0000-4000-8000-000000000001";
    pub const LABS_BRIDGE: &str = "b0000000-0000-4000-8000-000000000002";
    pub const LABS_ARCHIVE: &str = "b0000000-0000-4000-8000-000000000003";
    pub const LEGACY: &str = "c0000000-0000-4000-8000-000000000001";
    pub const GITHUB_HQ: &str = "e0000000-0000-4000-8000-000000000001";
    pub const GITHUB_LABS: &str = "e0000000-0000-4000-8000-000000000003";
}

/// A private PostgreSQL for one test that stops the server (the shared one must stay up): same
/// set-up as the shared server, its own data directory, stopped and deleted on drop.
pub struct PrivateServer {
    pub port: u16,
    base: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    run_as: RunAs,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    pub fn start() -> Result<Self, String> {
        let bindir = pgserver::bindir().map_err(|e| e.message)?;
        let run_as = RunAs::detect().map_err(|e| e.message)?;
        // Under the shared server's directory, so a killed test run's leftovers are cleaned
        // up with it.
        let base = server().base.join(format!(
            "private-{}",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let data = base.join("data");
        pgserver::initdb(&bindir, &data, run_as, Some(PASSWORD)).map_err(|e| e.message)?;
        let port = pgserver::free_port().map_err(|e| e.message)?;
        pgserver::configure(&data, port, true).map_err(|e| e.message)?;
        let mut s = PrivateServer {
            port,
            base,
            data,
            bindir,
            run_as,
            child: None,
        };
        s.resume()?;
        Ok(s)
    }

    /// (Re)start the server on its data directory and wait until it accepts connections.
    pub fn resume(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.run_as.command(&self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Dies with the test thread that started it, if the test never gets to stop it.
        unsafe {
            cmd.pre_exec(orgctl::testing::sys::set_parent_death_signal);
        }
        self.child = Some(cmd.spawn().map_err(|e| e.to_string())?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                return Err("the private postgres did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stop the server: SIGINT is PostgreSQL's fast shutdown (terminates every session, rolls
    /// back their transactions), SIGQUIT its immediate shutdown (crash-like).
    pub fn stop(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            orgctl::testing::sys::kill(c.id() as i32, signal);
            let _ = c.wait();
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_at(&self.bindir, self.port, db, sql)
    }

    pub fn url(&self, db: &str) -> String {
        url_at(self.port, db)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop(libc::SIGQUIT);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A real PgBouncer in front of the shared server, for one test: started from the installed
/// binary (as the `postgres` OS user when we are root: PgBouncer refuses root), its config,
/// auth file and log in a directory of its own, listening on a loopback port only (no Unix
/// socket), with every database of the shared server behind it (`* =`). Stopped on drop.
///
/// A missing pgbouncer is a test failure, never a skip: `.ci/run` installs it.
pub struct Bouncer {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

/// How PgBouncer hands server connections to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// The pgbouncer binary: on PATH, else where distributions put it.
pub fn pgbouncer_bin() -> Result<PathBuf, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join("pgbouncer");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err("pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does this)".into())
}

impl Bouncer {
    /// PgBouncer in `mode` with `pool_size` server connections per database, and at most
    /// `user_limit` server connections for the user across all databases (0: no limit).
    /// Nothing in `ignore_startup_parameters`: orgctl must need none.
    pub fn start(mode: PoolMode, pool_size: u32, user_limit: u32) -> Bouncer {
        match Self::try_start(mode, pool_size, user_limit) {
            Ok(b) => b,
            Err(e) => panic!("could not start pgbouncer: {e}"),
        }
    }

    fn try_start(mode: PoolMode, pool_size: u32, user_limit: u32) -> Result<Bouncer, String> {
        use std::os::unix::process::CommandExt;
        let bin = pgbouncer_bin()?;
        let s = server();
        let run_as = RunAs::detect().map_err(|e| e.message)?;
        // Under the shared server's directory, so a killed run's leftovers go with it.
        let dir = s.base.join(format!(
            "bouncer-{}",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        run_as.make_private_dir(&dir).map_err(|e| e.message)?;
        let port = pgserver::free_port().map_err(|e| e.message)?;
        // The auth file holds the test password in plain text: PgBouncer then does SCRAM both
        // with orgctl and with the server.
        let userlist = dir.join("userlist.txt");
        std::fs::write(
            &userlist,
            format!("\"postgres\" \"{}\"\n", PASSWORD.replace('"', "\"\"")),
        )
        .map_err(|e| e.to_string())?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {userlist}\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {pool_size}\n\
                 min_pool_size = 0\n\
                 reserve_pool_size = 0\n\
                 max_user_connections = {user_limit}\n\
                 max_client_conn = 200\n\
                 server_login_retry = 1\n\
                 logfile = {log}\n\
                 pidfile =\n\
                 admin_users = postgres\n",
                server_port = s.port,
                userlist = userlist.display(),
                mode = mode.as_str(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        for f in [&userlist, &ini] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| e.to_string())?;
        }
        let mut cmd = run_as.command(&bin);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Dies with the test thread that started it, if the test never gets to stop it.
        unsafe {
            cmd.pre_exec(orgctl::testing::sys::set_parent_death_signal);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not run {}: {e}", bin.display()))?;
        let b = Bouncer {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default();
                return Err(format!("pgbouncer did not come up: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// The URL of `db` through this PgBouncer.
    pub fn url(&self, db: &str) -> String {
        url_at(self.port, db)
    }

    /// SQL through this PgBouncer (with pool size 1, on the very server connection orgctl
    /// used).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_at(&server().bindir, self.port, db, sql)
    }

    /// PgBouncer's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: immediate shutdown; its directory is thrown away.
            orgctl::testing::sys::kill(c.id() as i32, libc::SIGTERM);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How [`CutProxy`] cuts the connection at the first COMMIT it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Forward the COMMIT to the server, then drop both sides: the change commits, the client
    /// never hears so (in doubt, really committed).
    AfterCommit,
    /// Drop both sides instead of forwarding the COMMIT: the server rolls back.
    BeforeCommit,
    /// As `AfterCommit`, and refuse every later connection: the client cannot find out.
    AfterCommitThenRefuse,
    /// Not at a COMMIT: drop both sides instead of forwarding the first statement (simple
    /// query or Parse) whose text contains this.
    BeforeStatement(&'static str),
    /// Never cut: forward everything, counting the statements ([`CutProxy::statements`]).
    Never,
    /// As `AfterCommit`, at the n-th COMMIT of a write (1-based; the earlier ones pass): for
    /// what a command commits after its change, such as its restart outcome rows.
    AfterNthCommit(usize),
}

/// A loopback TCP proxy (127.0.0.1 only) in front of the harness's server that forwards the
/// PostgreSQL protocol and cuts the connection at the first COMMIT (a simple-query 'Q' message
/// whose text contains COMMIT, as sqlx sends it) after a write transaction asked for the tenant
/// lock (`pg_try_advisory_xact_lock`). Later connections pass through, unless
/// [`Cut::AfterCommitThenRefuse`]. Threads end with the test process.
pub struct CutProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

struct ProxyState {
    mode: Cut,
    target: u16,
    armed: std::sync::atomic::AtomicBool,
    /// A write transaction has started (its tenant lock was asked for): the COMMITs before it
    /// (orgctl's own catalog checks and read-only transactions) pass.
    writing: std::sync::atomic::AtomicBool,
    cut: std::sync::atomic::AtomicBool,
    /// COMMITs of writes seen so far (for [`Cut::AfterNthCommit`]).
    commits: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
    /// Statements the clients sent: simple-query messages ('Q') and extended-protocol
    /// executions ('E'), as the server's log_statement counts them.
    statements: std::sync::atomic::AtomicUsize,
    /// Times a client waited for the server after the startup: simple-query messages ('Q') and
    /// Syncs ('S'), each answered by one ReadyForQuery — the round trips behind latency.
    waits: std::sync::atomic::AtomicUsize,
}

impl CutProxy {
    pub fn start(mode: Cut) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("proxy bind: {e}"),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("proxy addr: {e}"),
        };
        let state = std::sync::Arc::new(ProxyState {
            mode,
            target: server().port,
            armed: AtomicBool::new(true),
            writing: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            commits: std::sync::atomic::AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            statements: std::sync::atomic::AtomicUsize::new(0),
            waits: std::sync::atomic::AtomicUsize::new(0),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if st.mode == Cut::AfterCommitThenRefuse && st.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let st = st.clone();
                std::thread::spawn(move || proxy_conn(client, &st));
            }
        });
        CutProxy { port, state }
    }

    /// The URL of a database of the harness's server, through this proxy.
    pub fn url(&self, db: &str) -> String {
        url_at(self.port, db)
    }

    /// Statements forwarded so far, over every connection (see [`Cut::Never`]).
    pub fn statements(&self) -> usize {
        self.state.statements.load(Ordering::SeqCst)
    }

    /// Round trips after the startup so far, over every connection (see [`Cut::Never`]).
    pub fn waits(&self) -> usize {
        self.state.waits.load(Ordering::SeqCst)
    }

    /// Whether the proxy has cut a connection at a COMMIT.
    pub fn did_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn proxy_conn(client: std::net::TcpStream, st: &ProxyState) {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", st.target)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let (mut from_client, mut to_server) = (client, server);
    let mut started = false;
    loop {
        let mut msg = Vec::new();
        let mut tag = [0u8; 1];
        if started {
            if from_client.read_exact(&mut tag).is_err() {
                break;
            }
            msg.push(tag[0]);
        }
        let mut len = [0u8; 4];
        if from_client.read_exact(&mut len).is_err() {
            break;
        }
        msg.extend_from_slice(&len);
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n.saturating_sub(4)];
        if from_client.read_exact(&mut body).is_err() {
            break;
        }
        msg.extend_from_slice(&body);
        if !started {
            // SSLRequest / GSSENCRequest come before the startup message, untyped too.
            let code = body
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            started = !matches!(code, 80_877_103 | 80_877_104);
        } else if st.mode == Cut::Never {
            if matches!(tag[0], b'Q' | b'E') {
                st.statements.fetch_add(1, Ordering::SeqCst);
            }
            if matches!(tag[0], b'Q' | b'S') {
                st.waits.fetch_add(1, Ordering::SeqCst);
            }
        } else if matches!(tag[0], b'Q' | b'P')
            && String::from_utf8_lossy(&body).contains("advisory_xact_lock")
        {
            st.writing.store(true, Ordering::SeqCst);
        } else if let Cut::BeforeStatement(needle) = st.mode {
            if matches!(tag[0], b'Q' | b'P')
                && String::from_utf8_lossy(&body).contains(needle)
                && st.armed.swap(false, Ordering::SeqCst)
            {
                st.cut.store(true, Ordering::SeqCst);
                let _ = from_client.shutdown(Shutdown::Both);
                let _ = to_server.shutdown(Shutdown::Both);
                return;
            }
        } else if tag[0] == b'Q'
            && String::from_utf8_lossy(&body)
                .to_ascii_uppercase()
                .contains("COMMIT")
            && st.writing.load(Ordering::SeqCst)
            && match st.mode {
                Cut::AfterNthCommit(n) => st.commits.fetch_add(1, Ordering::SeqCst) + 1 == n,
                _ => true,
            }
            && st.armed.swap(false, Ordering::SeqCst)
        {
            // Marked before the client can notice and reconnect (AfterCommitThenRefuse).
            st.cut.store(true, Ordering::SeqCst);
            // The client must not see the answer: cut it off first.
            let _ = from_client.shutdown(Shutdown::Both);
            if st.mode != Cut::BeforeCommit {
                let _ = to_server.write_all(&msg);
                let _ = to_server.flush();
            }
            let _ = to_server.shutdown(Shutdown::Both);
            return;
        }
        if to_server.write_all(&msg).is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Both);
    let _ = from_client.shutdown(Shutdown::Both);
}

/// A tenants file in the temp directory (named by the process and `tag`), with `text`.
pub fn tenants_file(tag: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("orgctl-{}-{tag}.txt", std::process::id()));
    if let Err(e) = std::fs::write(&p, text) {
        panic!("{e}");
    }
    p
}

/// A transaction on the server itself (not through orgctl or a pooler), as a platform
/// transaction would hold: BEGIN, then `sqls`; it lasts until the connection is dropped or
/// ends it.
pub async fn hold(db: &TestDb, sqls: &[&str]) -> PgConnection {
    let mut c = db.connect().await;
    for sql in std::iter::once(&"BEGIN").chain(sqls) {
        if let Err(e) = sqlx::query(sql).execute(&mut c).await {
            panic!("{sql}: {e}");
        }
    }
    c
}

/// The pid of orgctl's backend in database `datname` once it waits on a lock (a row, the
/// tenant's advisory lock), polled from pg_stat_activity with a deadline.
pub async fn orgctl_waiting(admin: &mut PgConnection, datname: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid: Option<i32> = match sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'orgctl' AND wait_event_type = 'Lock'
              LIMIT 1",
        )
        .bind(datname)
        .fetch_optional(&mut *admin)
        .await
        {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "orgctl never waited on the held lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
