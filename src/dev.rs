//! `orgctl dev`: a throwaway local PostgreSQL with the platform schema and a sample org.
//!
//! The server runs from the installed binaries with its data in one place per OS user
//! (`$TMPDIR/orgctl-dev-<uid>` by default, whatever the current directory), listening on
//! loopback only, trusted (it holds nothing real). `dev up` twice reuses the running server;
//! `dev down` stops it and deletes its data — only when the directory's marker names that
//! data directory's system identifier, so it never takes a directory it did not make.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::Executor;

use crate::cli::{DevCommand, DevDirArgs, DevSeedArgs, DevUpArgs};
use crate::db::{self, DbUrl};
use crate::error::{Error, Exit, Result};
use crate::pgserver::{self, RunAs};
use crate::Context;

pub const DEV_DATABASE: &str = "orgctl_dev";
/// Marks a database as a throwaway one that `dev seed` may fill.
pub const DEV_COMMENT: &str = "orgctl dev database";
pub const SAMPLE_ORG_SQL: &str = include_str!("sql/sample_org.sql");

pub async fn run(ctx: &Context, cmd: &DevCommand) -> Result<Exit> {
    match cmd {
        DevCommand::Up(a) => up(ctx, a).await,
        DevCommand::Down(a) => down(ctx, a),
        DevCommand::Seed(a) => seed(ctx, a).await,
    }
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(dir))
    }
}

/// The dev directory: `--dir` / `ORGCTL_DEV_DIR`, else one fixed place per OS user under the
/// temporary directory, so `dev down` from any directory finds what `dev up` started, and the
/// `postgres` user (the server's user when orgctl runs as root) can reach it.
pub fn dev_dir(a: &DevDirArgs) -> Result<PathBuf> {
    match &a.dir {
        Some(d) => absolute(d),
        None => Ok(default_dir()),
    }
}

pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join(format!("orgctl-dev-{}", crate::sys::euid()))
}

/// The file `dev up` writes next to the data directory. `dev down` stops and deletes only a
/// directory whose marker names the data directory's own system identifier (from
/// `pg_controldata`), so it can never take a directory that merely looks like one.
pub const MARKER: &str = "orgctl-dev.marker";
const MARKER_HEAD: &str = "orgctl dev up";

fn marker_text(system_id: &str, port: u16) -> String {
    format!("{MARKER_HEAD}\nsystem_identifier={system_id}\nport={port}\n")
}

/// The system identifier a marker records, if the file is an orgctl marker.
fn read_marker(dir: &Path) -> Option<(String, u16)> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MARKER_HEAD {
        return None;
    }
    let mut id = None;
    let mut port = None;
    for l in lines {
        if let Some(v) = l.strip_prefix("system_identifier=") {
            id = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("port=") {
            port = v.parse().ok();
        }
    }
    Some((id?, port?))
}

/// The data directory's own identity: "Database system identifier" from `pg_controldata`.
fn system_identifier(bindir: &Path, run_as: RunAs, data: &Path) -> Option<String> {
    let out = run_as
        .command(&bindir.join("pg_controldata"))
        .arg("-D")
        .arg(data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("Database system identifier:")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// When the server runs as `postgres`, every directory above its data must be searchable.
fn ensure_reachable(run_as: RunAs, dir: &Path) -> Result<()> {
    if !crate::sys::is_root() {
        return Ok(());
    }
    let _ = run_as;
    use std::os::unix::fs::PermissionsExt;
    for anc in dir.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(anc) {
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(Error::failed(format!(
                    "the dev server runs as the 'postgres' user, which cannot reach {} ({} is not searchable by others); pass --dir under /tmp",
                    dir.display(),
                    anc.display()
                )));
            }
        }
    }
    Ok(())
}

fn url_for(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

fn running(bindir: &Path, run_as: RunAs, data: &Path) -> bool {
    run_as
        .command(&bindir.join("pg_ctl"))
        .arg("status")
        .arg("-D")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn stop(bindir: &Path, run_as: RunAs, data: &Path) -> Result<()> {
    let st = run_as
        .command(&bindir.join("pg_ctl"))
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "fast", "-w", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::failed(format!("could not run pg_ctl: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "could not stop the dev server in {}",
            data.display()
        )))
    }
}

/// What this `dev up` created, so a failure removes exactly that and nothing else.
#[derive(Default)]
struct Created {
    dir: Option<PathBuf>,
    cluster: Option<PathBuf>,
    started: bool,
}

impl Created {
    fn undo(&self, bindir: &Path, run_as: RunAs) {
        let Some(parent) = self.cluster.as_ref().and_then(|d| d.parent()) else {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return;
        };
        let data = parent.join("data");
        if self.started {
            let _ = stop(bindir, run_as, &data);
        }
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_file(parent.join(MARKER));
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn up(ctx: &Context, a: &DevUpArgs) -> Result<Exit> {
    let dir = dev_dir(&a.dir)?;
    let bindir = pgserver::bindir()?;
    let run_as = RunAs::detect()?;
    let mut created = Created::default();
    match up_in(ctx, a, &dir, &bindir, run_as, &mut created).await {
        Ok(exit) => Ok(exit),
        Err(e) => {
            // Leave nothing behind: a half-made cluster would make the next `dev up` reuse
            // it, and a started server would keep running with no marker to stop it by.
            created.undo(&bindir, run_as);
            Err(e)
        }
    }
}

async fn up_in(
    ctx: &Context,
    a: &DevUpArgs,
    dir: &Path,
    bindir: &Path,
    run_as: RunAs,
    created: &mut Created,
) -> Result<Exit> {
    let out = &ctx.out;
    let data = dir.join("data");
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::failed(format!("could not create {}: {e}", dir.display())))?;
        created.dir = Some(dir.to_path_buf());
        use std::os::unix::fs::PermissionsExt;
        // Others (the postgres user) may pass through to data/, not list or write.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    } else if !crate::sys::owned_by_me(dir) {
        return Err(Error::refused(format!(
            "{} exists and belongs to another user; not using it (pass --dir)",
            dir.display()
        )));
    }
    ensure_reachable(run_as, &data)?;

    let marker = read_marker(dir);
    let port = if let Some((id, port)) = &marker {
        if system_identifier(bindir, run_as, &data).as_deref() != Some(id.as_str()) {
            return Err(Error::refused(format!(
                "{} has an orgctl marker that does not match its data directory; not using it (remove it yourself, or pass another --dir)",
                dir.display()
            )));
        }
        if let Some(p) = a.port {
            if p != *port {
                out.warn(&format!(
                    "the dev server in {} already uses port {port}; ignoring --port {p}",
                    dir.display()
                ));
            }
        }
        *port
    } else {
        if data.exists() {
            return Err(Error::refused(format!(
                "{} already holds {} that `orgctl dev up` did not create; not using it (pass another --dir)",
                dir.display(),
                data.display()
            )));
        }
        out.info(&format!(
            "initialising a PostgreSQL cluster in {}",
            data.display()
        ));
        let port = match a.port {
            Some(p) => p,
            None => pgserver::free_port()?,
        };
        created.cluster = Some(data.clone());
        pgserver::initdb(bindir, &data, run_as, None)?;
        pgserver::configure(&data, port, true)?;
        let id = system_identifier(bindir, run_as, &data).ok_or_else(|| {
            Error::failed(format!(
                "could not read the system identifier of {} (pg_controldata)",
                data.display()
            ))
        })?;
        std::fs::write(dir.join(MARKER), marker_text(&id, port))?;
        port
    };

    let reused = running(bindir, run_as, &data);
    if !reused {
        let log = data.join("server.log");
        let status = run_as
            .command(&bindir.join("pg_ctl"))
            .arg("start")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::failed(format!("could not run pg_ctl: {e}")))?;
        if !status.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            return Err(Error::failed(format!(
                "the dev server did not start (port {port} busy?): {} {last}",
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        created.started = true;
    }

    let admin = DbUrl::parse(&url_for(port, "postgres"))?;
    let mut conn = db::connect(&admin, &ctx.settings).await?;
    if sample_database(ctx, &mut conn, port, DEV_DATABASE).await? {
        out.info("seeded the sample org: 3 roots (one removed), a deep chain, 8 tokens, 5 allowlist rows, secrets");
    }
    let tenants_file = match a.tenants {
        Some(n) => Some(sample_fleet(ctx, &mut conn, port, dir, n).await?),
        None => None,
    };
    let down = if a.dir.dir.is_none() {
        "orgctl dev down".to_string()
    } else {
        format!("orgctl dev down --dir {}", dir.display())
    };
    out.info(&format!(
        "dev database {} on 127.0.0.1:{port} ({}, data in {}); stop it with `{down}`",
        DEV_DATABASE,
        if reused { "reused" } else { "started" },
        dir.display()
    ));
    if out.json_mode() {
        let mut doc = serde_json::json!({ "database_url": url_for(port, DEV_DATABASE) });
        if let Some(f) = &tenants_file {
            doc["tenants_file"] = serde_json::Value::from(f.display().to_string());
        }
        out.json(&doc)?;
    } else {
        out.stdout(&format!("{}\n", url_for(port, DEV_DATABASE)))?;
    }
    Ok(Exit::Ok)
}

/// Create `name` with the platform schema and the sample org unless it exists; whether it was
/// created. The name is orgctl's own (a constant or `orgctl_dev_tN`): it cannot be a bound
/// value in CREATE DATABASE.
async fn sample_database(
    ctx: &Context,
    admin: &mut sqlx::PgConnection,
    port: u16,
    name: &str,
) -> Result<bool> {
    let exists: bool =
        db::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(false);
    }
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin
        .execute(format!("COMMENT ON DATABASE {name} IS '{DEV_COMMENT}'").as_str())
        .await?;
    let url = DbUrl::parse(&url_for(port, name))?;
    let mut dev = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_write(&mut dev, &ctx.settings).await?;
    tx.execute(db::PLATFORM_SCHEMA_SQL).await?;
    tx.execute(SAMPLE_ORG_SQL).await?;
    tx.commit().await?;
    Ok(true)
}

/// The tenants file `dev up --tenants N` writes into the dev directory (`dev down` removes it).
pub const TENANTS_FILE: &str = "tenants.txt";
/// Its first line: `dev down` removes a tenants file only when it starts so.
const TENANTS_HEAD: &str = "# Sample tenants of `orgctl dev up --tenants N`";

/// `dev up --tenants N`: N sample tenants `dev-1` … `dev-N` (databases `orgctl_dev_t1` …, each
/// with the sample org and its own org id `dev-org-I`) and the tenants file naming them.
async fn sample_fleet(
    ctx: &Context,
    admin: &mut sqlx::PgConnection,
    port: u16,
    dir: &Path,
    n: u32,
) -> Result<PathBuf> {
    let mut text = format!("{TENANTS_HEAD}: NAME DATABASE_URL org_id=ID\n");
    let mut made = 0;
    for i in 1..=n {
        if sample_database(ctx, admin, port, &format!("{DEV_DATABASE}_t{i}")).await? {
            made += 1;
        }
        text.push_str(&format!(
            "dev-{i} {} org_id=dev-org-{i}\n",
            url_for(port, &format!("{DEV_DATABASE}_t{i}"))
        ));
    }
    let path = dir.join(TENANTS_FILE);
    std::fs::write(&path, text)
        .map_err(|e| Error::failed(format!("could not write {}: {e}", path.display())))?;
    ctx.out.info(&format!(
        "{n} sample tenant(s) ({made} new, each with the sample org); tenants file: {}",
        path.display()
    ));
    Ok(path)
}

fn down(ctx: &Context, a: &DevDirArgs) -> Result<Exit> {
    let dir = dev_dir(a)?;
    let data = dir.join("data");
    if !dir.exists() {
        ctx.out.info(&format!(
            "no dev server in {}: nothing to do",
            dir.display()
        ));
        return Ok(Exit::Ok);
    }
    // Only what `dev up` made: its marker, matched against the data directory's identity.
    let Some((id, _port)) = read_marker(&dir) else {
        return Err(Error::refused(format!(
            "{} was not created by `orgctl dev up` (no {MARKER}); not stopping or deleting anything",
            dir.display()
        )));
    };
    let bindir = pgserver::bindir()?;
    let run_as = RunAs::detect()?;
    if data.exists() {
        match system_identifier(&bindir, run_as, &data) {
            Some(actual) if actual == id => {}
            _ => {
                return Err(Error::refused(format!(
                    "{} does not hold the cluster its {MARKER} names; not stopping or deleting anything",
                    dir.display()
                )))
            }
        }
        if running(&bindir, run_as, &data) {
            stop(&bindir, run_as, &data)?;
        }
        std::fs::remove_dir_all(&data)
            .map_err(|e| Error::failed(format!("could not delete {}: {e}", data.display())))?;
    }
    std::fs::remove_file(dir.join(MARKER))
        .map_err(|e| Error::failed(format!("could not delete {MARKER}: {e}")))?;
    // The tenants file of `dev up --tenants`: it names databases that are gone now.
    let tenants = dir.join(TENANTS_FILE);
    if std::fs::read_to_string(&tenants).is_ok_and(|t| t.starts_with(TENANTS_HEAD)) {
        let _ = std::fs::remove_file(&tenants);
    }
    // The directory itself only when nothing else is in it (dev up may have been pointed at
    // a directory that holds other things).
    let kept = std::fs::remove_dir(&dir).is_err();
    ctx.out.info(&format!(
        "stopped the dev server and deleted {}{}",
        if kept { data.display() } else { dir.display() },
        if kept {
            " (the directory holds other files: kept)"
        } else {
            ""
        }
    ));
    Ok(Exit::Ok)
}

/// The set-based statements of `dev seed`, run in one transaction.
const LARGE_ORG: &[&str] = &[
    "CREATE TEMP TABLE seed_roots ON COMMIT DROP AS
       SELECT gen_random_uuid() AS id, g AS rn FROM generate_series(0, $1 - 1) g",
    "CREATE TEMP TABLE seed_children ON COMMIT DROP AS
       SELECT gen_random_uuid() AS id, g AS rn FROM generate_series(0, $2 - $1 - 1) g",
    "INSERT INTO workspaces (id, name, tier, status, created_at)
       SELECT id, 'root-' || rn, 1, 'online', now() - rn * interval '1 minute' FROM seed_roots",
    "INSERT INTO workspaces (id, name, tier, status, parent_id)
       SELECT c.id, 'ws-' || c.rn, 2, 'online', r.id
         FROM seed_children c JOIN seed_roots r ON r.rn = c.rn % $1",
    "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, revoked_at, org_id)
       SELECT h, substr(encode(h, 'hex'), 1, 8), 'root-token-' || g, 'session',
              CASE WHEN g % 100 < $5 THEN now() END, r.id
         FROM generate_series(0, $4 - 1) g
         JOIN seed_roots r ON r.rn = g % $1
         CROSS JOIN LATERAL (SELECT sha256(convert_to($8 || ':r:' || g, 'UTF8')) AS h) x",
    "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, revoked_at, org_id)
       SELECT h, substr(encode(h, 'hex'), 1, 8), 'token-' || g, 'session',
              CASE WHEN g % 100 < $5 THEN now() END, c.id
         FROM generate_series(0, $3 - $4 - 1) g
         LEFT JOIN seed_children c ON g % 2 = 0 AND c.rn = g % GREATEST($2 - $1, 1)
         CROSS JOIN LATERAL (SELECT sha256(convert_to($8 || ':o:' || g, 'UTF8')) AS h) x",
    "INSERT INTO org_plugin_allowlist (org_id, plugin_name, enabled_by, enabled_at)
       SELECT r.id, 'plugin-' || (((g / $1) + r.rn * 7) % $7), 'seed',
              now() - (g % 997) * interval '1 minute'
         FROM generate_series(0, $6 - 1) g JOIN seed_roots r ON r.rn = g % $1
       ON CONFLICT DO NOTHING",
];

async fn seed(ctx: &Context, a: &DevSeedArgs) -> Result<Exit> {
    if a.roots == 0 || a.workspaces < a.roots || a.tokens < a.tokens_on_roots || a.plugins == 0 {
        return Err(Error::usage(
            "dev seed needs --roots >= 1, --workspaces >= --roots, --tokens >= --tokens-on-roots and --plugins >= 1",
        ));
    }
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let comment: Option<String> = db::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    if comment.as_deref() != Some(DEV_COMMENT) {
        return Err(Error::refused(format!(
            "{} is not an orgctl dev database; dev seed only fills databases made by `orgctl dev up` or the tests",
            url.target()
        )));
    }
    db::ensure_compatible(&mut conn).await?;
    let salt = uuid::Uuid::new_v4().to_string();
    let mut tx = db::begin_write(&mut conn, &ctx.settings).await?;
    let pb = ctx.out.progress(LARGE_ORG.len() as u64 + 1, "seeding");
    for stmt in LARGE_ORG {
        db::query(stmt)
            .bind(a.roots as i32)
            .bind(a.workspaces as i32)
            .bind(a.tokens as i32)
            .bind(a.tokens_on_roots as i32)
            .bind(a.revoked_pct as i32)
            .bind(a.allowlist as i32)
            .bind(a.plugins as i32)
            .bind(&salt)
            .execute(&mut *tx)
            .await?;
        pb.inc(1);
    }
    tx.commit().await?;
    conn.execute("ANALYZE").await?;
    pb.finish_and_clear();
    ctx.out.info(&format!(
        "seeded {} roots, {} workspaces, {} tokens ({} on roots), {} allowlist rows into {}",
        a.roots,
        a.workspaces,
        a.tokens,
        a.tokens_on_roots,
        a.allowlist,
        url.target()
    ));
    Ok(Exit::Ok)
}
