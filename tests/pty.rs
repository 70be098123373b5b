//! A pseudo-terminal driver for the interactive paths: orgctl runs with
//! stdin, stdout and stderr on the slave side of a pty, as its own session with the pty as its
//! controlling terminal, so prompts, hidden input and Ctrl-C (the byte 0x03, turned into SIGINT
//! by the terminal's line discipline, as when a human presses it) behave as on a real terminal.
//! No dependency beyond libc, which orgctl already uses.
#![allow(unsafe_code, dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: File,
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

pub const CTRL_C: &[u8] = b"\x03";

impl Pty {
    /// Start `cmd` on a new pty (120x40).
    pub fn spawn(cmd: Command) -> Pty {
        Self::spawn_sized(cmd, 120)
    }

    /// Start `cmd` on a new pty `cols` columns wide (40 rows).
    pub fn spawn_sized(mut cmd: Command, cols: u16) -> Pty {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let master = unsafe { File::from_raw_fd(master) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let dup = |fd: &OwnedFd| match fd.try_clone() {
            Ok(f) => Stdio::from(f),
            Err(e) => panic!("dup: {e}"),
        };
        cmd.stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(dup(&slave));
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own, with the pty (its stdin) as controlling terminal, so
                // 0x03 on the pty becomes SIGINT for it.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn on a pty: {e}"),
        };
        drop(slave); // only the child holds the slave now: EOF/EIO on the master when it exits
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut rd = match master.try_clone() {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let o = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut v) = o.lock() {
                            v.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            }
        });
        Pty {
            master,
            child,
            out,
            reader: Some(reader),
        }
    }

    /// Everything the terminal showed so far.
    pub fn output(&self) -> String {
        match self.out.lock() {
            Ok(v) => String::from_utf8_lossy(&v).to_string(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Wait until the terminal shows `needle` (panics with the transcript after `timeout`).
    #[track_caller]
    pub fn expect(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Give the reader a moment to drain what the child wrote last.
                std::thread::sleep(Duration::from_millis(50));
                if self.output().contains(needle) {
                    return;
                }
                panic!(
                    "orgctl exited ({st}) before showing {needle:?}:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!("the terminal never showed {needle:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Type bytes on the terminal.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self
            .master
            .write_all(bytes)
            .and_then(|_| self.master.flush())
        {
            panic!("write to the pty: {e}");
        }
    }

    /// Whether the terminal echoes typed characters right now (ECHO in its local modes).
    pub fn echo_on(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t.c_lflag & libc::ECHO != 0
    }

    /// Wait until the terminal's echo is `on` (a prompt turns it off just after drawing
    /// itself); panics after `timeout`.
    #[track_caller]
    pub fn expect_echo(&self, on: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.echo_on() != on {
            assert!(
                Instant::now() < deadline,
                "echo never turned {}:\n{}",
                if on { "on" } else { "off" },
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the exit (panics after `timeout`); the exit code (128+N for a signal) and the
    /// whole transcript.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("orgctl did not exit:\n{}", self.output());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        (code, self.output())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
