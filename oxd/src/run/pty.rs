//! The agent's own terminal: when `oxd run`'s stdin is a terminal, the agent gets a new
//! pseudo-terminal instead, and oxd relays between the two. The agent never holds the caller's
//! terminal, so what it does to its terminal (`TIOCSTI` input injection, changing its modes,
//! keeping it open after exiting) reaches only its own.
//!
//! While relaying, the caller's terminal is in raw mode: every key goes to the agent's terminal
//! as typed, and that terminal's line discipline does the rest (echo, line editing, ^C as
//! SIGINT to the agent's foreground process group). The caller's modes are restored when the
//! relay ends.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Whether `fd` is a terminal.
pub(super) fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn last_error(what: &str) -> io::Error {
    let error = io::Error::last_os_error();
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// Sets close-on-exec on `fd`.
fn cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(last_error("fcntl(FD_CLOEXEC)"));
    }
    Ok(())
}

/// A relay between the caller's terminal (oxd's stdin, and stdout or stderr when they are
/// terminals) and the agent's pseudo-terminal.
pub(super) struct Relay {
    master: OwnedFd,
    /// The agent's end, until [`Self::slave`] hands out copies for the agent's stdio.
    slave: Option<OwnedFd>,
    /// The caller's terminal modes, restored when the relay ends.
    saved: libc::termios,
    /// Whether the caller's terminal was put in raw mode (and must be restored).
    raw: bool,
    /// Copies the agent's terminal output to the caller's; ends when every copy of the
    /// agent's end is closed.
    output: Option<JoinHandle<()>>,
}

impl Relay {
    /// Opens the agent's terminal with the caller's window size. Does not touch the caller's
    /// terminal yet.
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: an all-zero winsize and termios are valid; the calls fill them.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: terminal ioctls on stdin, writing into our structs.
        unsafe {
            if libc::tcgetattr(0, &raw mut saved) != 0 {
                return Err(last_error("tcgetattr(stdin)"));
            }
            if libc::ioctl(0, libc::TIOCGWINSZ, &raw mut size) != 0 {
                size = std::mem::zeroed();
            }
        }
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors; the agent's terminal starts with the
        // caller's modes and window size.
        let ret = unsafe {
            libc::openpty(
                &raw mut master,
                &raw mut slave,
                std::ptr::null_mut(),
                &raw const saved,
                &raw const size,
            )
        };
        if ret != 0 {
            return Err(last_error("openpty"));
        }
        // SAFETY: openpty just returned these descriptors, owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cloexec(master.as_raw_fd())?;
        cloexec(slave.as_raw_fd())?;
        Ok(Self {
            master,
            slave: Some(slave),
            saved,
            raw: false,
            output: None,
        })
    }

    /// A copy of the agent's end, for one of its standard descriptors.
    pub(super) fn slave(&self) -> io::Result<OwnedFd> {
        self.slave
            .as_ref()
            .ok_or_else(|| io::Error::other("the agent's terminal was already handed over"))?
            .try_clone()
    }

    /// Starts relaying, once the agent holds its end: the caller's terminal goes raw, its input
    /// goes to the agent's terminal and that terminal's output to `out` (oxd's stdout or
    /// stderr). When oxd is a background job of that terminal, its input and modes are left
    /// alone (touching them would stop oxd with `SIGTTIN`/`SIGTTOU`): the agent then gets no
    /// input, as a background job would not.
    pub(super) fn start(&mut self, out: RawFd) -> io::Result<()> {
        // oxd's own copy of the agent's end goes, so the output relay sees the end of it.
        self.slave = None;
        // SAFETY: plain system calls about stdin and this process.
        let background = unsafe {
            let foreground = libc::tcgetpgrp(0);
            foreground > 0 && foreground != libc::getpgrp()
        };
        if !background {
            self.relay_input()?;
        }
        self.relay_output(out)
    }

    /// The caller's terminal in raw mode, and its keys to the agent's terminal.
    fn relay_input(&mut self) -> io::Result<()> {
        let mut raw = self.saved;
        // SAFETY: termios calls on stdin with a struct we own.
        unsafe {
            libc::cfmakeraw(&raw mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw const raw) != 0 {
                return Err(last_error("tcsetattr(stdin)"));
            }
        }
        self.raw = true;
        let mut to_agent = File::from(self.master.try_clone()?);
        // Reads the caller's keys until oxd exits; not joined: a read of a terminal cannot be
        // interrupted, and the thread ends with the process.
        std::thread::Builder::new()
            .name("pty-input".into())
            .spawn(move || {
                // SAFETY: stdin stays open for the life of the process; ManuallyDrop keeps
                // this File from closing it.
                let mut stdin = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdin.read(&mut buf) {
                    if to_agent.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })?;
        Ok(())
    }

    /// The agent's terminal output to `out`.
    fn relay_output(&mut self, out: RawFd) -> io::Result<()> {
        let mut from_agent = File::from(self.master.try_clone()?);
        // SAFETY: duplicating oxd's own stdout or stderr.
        let out = unsafe { libc::fcntl(out, libc::F_DUPFD_CLOEXEC, 3) };
        if out < 0 {
            return Err(last_error("dup"));
        }
        // SAFETY: the duplicate is ours.
        let mut out = unsafe { File::from_raw_fd(out) };
        self.output = Some(
            std::thread::Builder::new()
                .name("pty-output".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    // EIO once every copy of the agent's end is closed.
                    while let Ok(n @ 1..) = from_agent.read(&mut buf) {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = out.flush();
                })?,
        );
        Ok(())
    }

    /// Copies the caller's window size to the agent's terminal (on SIGWINCH).
    pub(super) fn resize(&self) {
        // SAFETY: terminal ioctls with a struct we own.
        unsafe {
            let mut size: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &raw mut size) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size);
            }
        }
    }

    /// Waits (a little) for the agent's last output to be relayed, then restores the caller's
    /// terminal. Call it once nothing of the agent is left running.
    pub(super) fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !output.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if output.is_finished() {
                let _ = output.join();
            }
        }
        // The caller's modes come back in `drop`, if they were changed.
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.raw {
            // SAFETY: restoring the caller's modes saved in `open`.
            unsafe {
                libc::tcsetattr(0, libc::TCSADRAIN, &raw const self.saved);
            }
        }
    }
}
