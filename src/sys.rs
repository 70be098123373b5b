//! The few calls into the operating system that need `libc`.
#![allow(unsafe_code)]

use std::ffi::CStr;

/// The OS user running orgctl, for `created_by` defaults and the audit log.
pub fn os_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.trim().is_empty() {
                return u;
            }
        }
    }
    // SAFETY: geteuid cannot fail; getpwuid returns NULL or a pointer to a static record that
    // we copy out of immediately (orgctl calls this from one thread at a time).
    unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(name) = CStr::from_ptr((*pw).pw_name).to_str() {
                return name.to_string();
            }
        }
        format!("uid:{uid}")
    }
}

/// Whether the process runs as root (initdb refuses root, so servers start as `postgres`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective uid (names the per-user default dev directory).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a path is owned by the effective user (a predictable path under /tmp may have been
/// made by someone else).
pub fn owned_by_me(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.uid() == euid() && m.is_dir())
        .unwrap_or(false)
}

/// uid and gid of a named OS user.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: cname is a valid NUL-terminated string; the record is copied out at once.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// Change the owner of a path (used to hand a data directory to the `postgres` user).
pub fn chown(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Ask the kernel to send SIGKILL to this (child) process when the thread that spawned it
/// exits. For `pre_exec` hooks.
pub fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Send a signal to a process; false when it does not exist.
pub fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The terminal settings of stdin, saved at start so that an interrupted hidden prompt (echo
/// off) can be undone on the way out.
pub struct SavedTerminal(Option<libc::termios>);

impl SavedTerminal {
    pub fn save() -> Self {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return SavedTerminal(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails, and we keep it only when
        // it succeeded.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0 {
                SavedTerminal(Some(t))
            } else {
                SavedTerminal(None)
            }
        }
    }

    /// Put the terminal back as it was (echo on, cursor visible).
    pub fn restore(&self) {
        if let Some(t) = &self.0 {
            // SAFETY: t came from tcgetattr on the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                use std::io::Write as _;
                let _ = std::io::stderr().write_all(b"\x1b[?25h");
            }
        }
    }
}

/// Why stdout cannot deliver anything to anyone: closed (the Rust runtime reopens a closed
/// fd 1 as /dev/null, so this sees /dev/null) or /dev/null. None when it looks deliverable.
pub fn stdout_undeliverable() -> Option<&'static str> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return Some("closed"),
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return Some("closed");
    };
    match std::fs::metadata("/dev/null") {
        Ok(null) if meta.dev() == null.dev() && meta.ino() == null.ino() => Some("/dev/null"),
        Ok(null) if meta.rdev() != 0 && meta.rdev() == null.rdev() => Some("/dev/null"),
        _ => None,
    }
}
