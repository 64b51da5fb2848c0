//! The watchdog: what makes `oxd run` fail closed when oxd itself dies.
//!
//! `oxd run`'s programs stay attached as long as some process holds their links. The watchdog
//! is a process forked right after the programs are attached and the agent's cgroup is
//! confined, while oxd is still single-threaded: it holds copies of all of oxd's descriptors,
//! links included, and waits for oxd on a pipe. If oxd dies (killed, crashed, out of memory),
//! the pipe reads end-of-file; the programs are still attached (the watchdog holds them), and
//! the watchdog kills everything in the agent's cgroup (`cgroup.kill`, the whole subtree at
//! once), waits until the cgroup is empty, removes it, and only then exits, releasing the
//! links. So nothing the agent started runs on unconfined: it dies, confined to the end.
//!
//! When oxd finishes normally it removes the cgroup itself, drops its own copies of the links,
//! then closes the pipe and exits; the watchdog finds the cgroup gone and exits too, detaching
//! the programs as the last holder of their links, after `oxd run` has returned. Both are
//! protected from the agent by the guard (signals, ptrace, ... toward them are denied), and
//! each watches the other: if the watchdog dies, oxd ends the run ([`Watchdog::exited`]).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use tokio::io::unix::AsyncFd;

/// The watchdog process, seen from oxd.
pub(super) struct Watchdog {
    pid: libc::pid_t,
    /// The write end of the pipe the watchdog reads: closing it (or dying) tells it oxd is gone.
    pipe: Option<OwnedFd>,
    /// A pidfd of the watchdog: readable once it has exited.
    pidfd: OwnedFd,
}

impl Watchdog {
    /// Forks the watchdog for the agent's cgroup at `cgroup`. Must be called while this
    /// process has a single thread (checked), after every link is made.
    pub(super) fn spawn(cgroup: &Path) -> Result<Self> {
        let threads = std::fs::read_dir("/proc/self/task")
            .context("cannot list oxd's threads")?
            .count();
        if threads != 1 {
            bail!("internal error: the watchdog must be forked while oxd has one thread, not {threads}");
        }
        let kill = path_c(&cgroup.join("cgroup.kill"))?;
        let events = path_c(&cgroup.join("cgroup.events"))?;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error()).context("cannot make the watchdog's pipe");
        }
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: oxd has one thread (checked above), so the child may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("cannot fork the watchdog");
        }
        if pid == 0 {
            drop(write_end);
            watch(&read_end, &kill, &events, cgroup);
        }
        drop(read_end);
        // SAFETY: a system call on a pid this process just forked.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = i32::try_from(pidfd).unwrap_or(-1);
        if pidfd < 0 {
            let error = io::Error::last_os_error();
            // SAFETY: as above; the child is ours to kill and reap.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(error).context("cannot open a pidfd of the watchdog");
        }
        Ok(Self {
            pid,
            pipe: Some(write_end),
            // SAFETY: a new descriptor from pidfd_open.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        })
    }

    /// The watchdog's process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Resolves when the watchdog has exited (it only does on its own if killed from outside
    /// while oxd is alive: then the run must end, since oxd's own death would no longer be
    /// covered).
    pub(super) async fn exited(&self) -> io::Result<()> {
        let pidfd = self.pidfd.try_clone()?;
        // SAFETY: the `AsyncFd` owns the descriptor it is registered with.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        let _ = fd.readable().await?;
        Ok(())
    }

    /// Tells the watchdog the run is over. Once oxd has dropped its own copies of the links,
    /// the watchdog holds the last ones: it detaches the programs by exiting, in the
    /// background, so that `oxd run` returns without waiting for the kernel to take them off
    /// their hooks (each detach waits for a trampoline update; dozens of programs take
    /// seconds). Nothing is confined by then: the agent's cgroup is gone.
    ///
    /// With `cgroup_left` (oxd could not remove the agent's cgroup), the watchdog goes on
    /// killing what is left and removes it; then oxd waits for it, so that `oxd run` returns
    /// only once nothing the agent started is alive.
    pub(super) fn release(mut self, cgroup_left: bool) {
        self.pipe = None;
        if cgroup_left {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid, &raw mut status, 0) };
        }
    }
}

fn path_c(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).context("cgroup path with a NUL byte")
}

/// The watchdog's life: wait for oxd to go, then kill the cgroup and wait until it is empty.
fn watch(pipe: &OwnedFd, kill: &CString, events: &CString, cgroup: &Path) -> ! {
    // SAFETY: system calls on descriptors and buffers this process owns.
    unsafe {
        // Its own session: the terminal's signals (Ctrl-C) are for oxd and the agent.
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"oxd-watchdog".as_ptr(), 0, 0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let mut byte = 0_u8;
        loop {
            let n = libc::read(pipe.as_raw_fd(), (&raw mut byte).cast(), 1);
            if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                break;
            }
        }
        // oxd is gone, or done. Kill until the cgroup is empty or gone; the links stay held.
        loop {
            let fd = libc::open(kill.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    libc::_exit(0);
                }
            } else {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
            if !populated(events) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = remove_tree(cgroup);
        libc::_exit(0)
    }
}

/// Whether the cgroup (or one below it) still has a process: `populated 1` in cgroup.events.
/// An unreadable file counts as populated, except when the cgroup is gone.
fn populated(events: &CString) -> bool {
    let mut buf = [0_u8; 256];
    // SAFETY: reading into a buffer this process owns.
    let n = unsafe {
        let fd = libc::open(events.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT);
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else {
        return true;
    };
    !buf[..n]
        .split(|&b| b == b'\n')
        .any(|line| line == b"populated 0")
}

/// Removes the emptied cgroup and the cgroups the agent made below it, deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
