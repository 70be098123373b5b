//! The dev directory's life: `dev up` makes (or reuses) a cluster in it and starts it, `dev
//! down` stops and deletes only a cluster that `dev up` made there.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::sample::{sample_database, sample_fleet, DEV_DATABASE};
use super::server::{self, RunAs};
use crate::db::{self, DbUrl, Settings};
use crate::error::{Error, Result};
use crate::output::Output;

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
pub fn dev_dir(dir: Option<&Path>) -> Result<PathBuf> {
    match dir {
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

pub(super) fn url_for(port: u16, db: &str) -> String {
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

/// What `dev up` is asked for: where, on which port, how many sample tenants.
#[derive(Clone, Debug)]
pub struct UpInput {
    /// The dev directory ([`dev_dir`]).
    pub dir: PathBuf,
    /// Loopback port for a new cluster (default: a free one).
    pub port: Option<u16>,
    /// Also make this many sample tenants and their tenants file.
    pub tenants: Option<u32>,
}

/// The dev server `dev up` left running.
#[derive(Clone, Debug)]
pub struct Up {
    pub port: u16,
    /// It was running already (else this `dev up` started it).
    pub reused: bool,
    /// The dev database's URL (no password: the server trusts loopback).
    pub database_url: String,
    /// The tenants file of `--tenants`.
    pub tenants_file: Option<PathBuf>,
}

/// Make (or reuse) the dev cluster in `input.dir`, start it, and give it the sample org; then
/// `report` what is running. Whatever fails, `report` included, removes exactly what this call
/// made: a half-made cluster would make the next `dev up` reuse it, and a started server would
/// keep running with no marker to stop it by.
pub async fn up(
    out: &Output,
    settings: &Settings,
    input: &UpInput,
    report: impl FnOnce(&Up) -> Result<()>,
) -> Result<()> {
    let bindir = server::bindir()?;
    let run_as = RunAs::detect()?;
    let mut created = Created::default();
    let made = up_in(out, settings, input, &bindir, run_as, &mut created).await;
    match made.and_then(|up| report(&up)) {
        Ok(()) => Ok(()),
        Err(e) => {
            created.undo(&bindir, run_as);
            Err(e)
        }
    }
}

async fn up_in(
    out: &Output,
    settings: &Settings,
    input: &UpInput,
    bindir: &Path,
    run_as: RunAs,
    created: &mut Created,
) -> Result<Up> {
    let dir = input.dir.as_path();
    let data = dir.join("data");
    prepare_dir(dir, created)?;
    ensure_reachable(run_as, &data)?;
    let port = cluster_port(out, input, bindir, run_as, created)?;
    let reused = running(bindir, run_as, &data);
    if !reused {
        start(bindir, run_as, &data, port)?;
        created.started = true;
    }
    let admin = DbUrl::parse(&url_for(port, "postgres"))?;
    let mut conn = db::connect(&admin, settings).await?;
    if sample_database(settings, &mut conn, port, DEV_DATABASE).await? {
        out.info("seeded the sample org: 3 roots (one removed), a deep chain, 8 tokens, 5 allowlist rows, secrets");
    }
    let tenants_file = match input.tenants {
        Some(n) => Some(sample_fleet(out, settings, &mut conn, port, dir, n).await?),
        None => None,
    };
    Ok(Up {
        port,
        reused,
        database_url: url_for(port, DEV_DATABASE),
        tenants_file,
    })
}

/// The dev directory exists and is ours (made now, mode 0711, when it did not exist).
fn prepare_dir(dir: &Path, created: &mut Created) -> Result<()> {
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
    Ok(())
}

/// The port of the dev cluster: the one its marker records when `dev up` made it before (the
/// marker must match the data directory), else a new cluster's (initialised and marked now).
fn cluster_port(
    out: &Output,
    input: &UpInput,
    bindir: &Path,
    run_as: RunAs,
    created: &mut Created,
) -> Result<u16> {
    let dir = input.dir.as_path();
    let data = dir.join("data");
    if let Some((id, port)) = read_marker(dir) {
        if system_identifier(bindir, run_as, &data).as_deref() != Some(id.as_str()) {
            return Err(Error::refused(format!(
                "{} has an orgctl marker that does not match its data directory; not using it (remove it yourself, or pass another --dir)",
                dir.display()
            )));
        }
        if let Some(p) = input.port {
            if p != port {
                out.warn(&format!(
                    "the dev server in {} already uses port {port}; ignoring --port {p}",
                    dir.display()
                ));
            }
        }
        return Ok(port);
    }
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
    let port = match input.port {
        Some(p) => p,
        None => server::free_port()?,
    };
    created.cluster = Some(data.clone());
    server::initdb(bindir, &data, run_as, None)?;
    server::configure(&data, port, true)?;
    let id = system_identifier(bindir, run_as, &data).ok_or_else(|| {
        Error::failed(format!(
            "could not read the system identifier of {} (pg_controldata)",
            data.display()
        ))
    })?;
    std::fs::write(dir.join(MARKER), marker_text(&id, port))?;
    Ok(port)
}

/// `pg_ctl start`, waiting up to 60 s; the end of the server log when it does not start.
fn start(bindir: &Path, run_as: RunAs, data: &Path, port: u16) -> Result<()> {
    let log = data.join("server.log");
    let status = run_as
        .command(&bindir.join("pg_ctl"))
        .arg("start")
        .arg("-D")
        .arg(data)
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
    Ok(())
}

/// What `dev down` did.
#[derive(Clone, Debug)]
pub enum Down {
    /// There is no dev directory: nothing to do.
    Nothing,
    /// The server is stopped and its data deleted; `kept`: the directory itself holds other
    /// files and stays.
    Stopped { data: PathBuf, kept: bool },
}

/// Stop the dev server in `dir` and delete its data, only when its marker names the data
/// directory's own system identifier; the directory too when nothing else is in it.
pub fn down(dir: &Path) -> Result<Down> {
    let data = dir.join("data");
    if !dir.exists() {
        return Ok(Down::Nothing);
    }
    // Only what `dev up` made: its marker, matched against the data directory's identity.
    let Some((id, _port)) = read_marker(dir) else {
        return Err(Error::refused(format!(
            "{} was not created by `orgctl dev up` (no {MARKER}); not stopping or deleting anything",
            dir.display()
        )));
    };
    let bindir = server::bindir()?;
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
    super::sample::remove_tenants_file(dir);
    // The directory itself only when nothing else is in it (dev up may have been pointed at
    // a directory that holds other things).
    let kept = std::fs::remove_dir(dir).is_err();
    Ok(Down::Stopped { data, kept })
}
