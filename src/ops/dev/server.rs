//! Starting a local PostgreSQL from the installed server binaries, for `orgctl dev up` and for
//! the test harness (which spawns `postgres` itself so the server dies with the tests).
//!
//! `initdb` refuses to run as root; when orgctl runs as root the data directory is handed to
//! the `postgres` OS user and the server binaries run as that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Where the server binaries live: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() && dir.join("postgres").exists() {
                return Ok(dir);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop().ok_or_else(|| {
        Error::failed(
            "no PostgreSQL server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin): install postgresql (apt-get install postgresql)",
        )
    })
}

/// The OS user the server runs as: `postgres` when we are root, else ourselves.
#[derive(Clone, Copy, Debug)]
pub struct RunAs(Option<(u32, u32)>);

impl RunAs {
    pub fn detect() -> Result<Self> {
        if crate::sys::is_root() {
            let ids = crate::sys::lookup_user("postgres").ok_or_else(|| {
                Error::failed(
                    "running as root, and initdb refuses root, but there is no 'postgres' OS user to run the server as (useradd --system postgres)",
                )
            })?;
            Ok(RunAs(Some(ids)))
        } else {
            Ok(RunAs(None))
        }
    }

    /// A command for a server binary, run as the server's user, from `/`.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.0 {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir("/").env("LC_ALL", "C").env_remove("PGDATA");
        cmd
    }

    /// Create `dir` (mode 0700) owned by the server's user.
    pub fn make_private_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::failed(format!("could not create {}: {e}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.0 {
            crate::sys::chown(dir, uid, gid).map_err(|e| {
                Error::failed(format!("could not hand {} to postgres: {e}", dir.display()))
            })?;
        }
        Ok(())
    }
}

/// Run `initdb` into an empty `data` directory. With a password, TCP connections need it
/// (scram-sha-256); without, loopback is trusted (throwaway dev servers only).
pub fn initdb(bindir: &Path, data: &Path, run_as: RunAs, password: Option<&str>) -> Result<()> {
    run_as.make_private_dir(data)?;
    let mut cmd = run_as.command(&bindir.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .arg("--auth-local=trust");
    let pwfile = data.with_extension("pw");
    if let Some(pw) = password {
        std::fs::write(&pwfile, pw)?;
        if let RunAs(Some((uid, gid))) = run_as {
            crate::sys::chown(&pwfile, uid, gid)?;
        }
        cmd.arg("--auth-host=scram-sha-256")
            .arg("--pwfile")
            .arg(&pwfile);
    } else {
        cmd.arg("--auth-host=trust");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::failed(format!("could not run initdb: {e}")))?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        return Err(Error::failed(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Append orgctl's settings to `postgresql.conf`: loopback TCP only on `port`, no Unix socket
/// (socket paths have a length limit), and durability off when `fast` (tests, benchmarks).
pub fn configure(data: &Path, port: u16, fast: bool) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    writeln!(f, "\n# orgctl")?;
    writeln!(f, "port = {port}")?;
    writeln!(f, "listen_addresses = '127.0.0.1'")?;
    writeln!(f, "unix_socket_directories = ''")?;
    writeln!(f, "max_connections = 200")?;
    if fast {
        writeln!(f, "fsync = off")?;
        writeln!(f, "synchronous_commit = off")?;
        writeln!(f, "full_page_writes = off")?;
    }
    Ok(())
}

/// A free loopback port (the tiny race with other programs is acceptable for a dev server).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
