//! Techniques of the `ipc` family (see the crate documentation): acting through a task,
//! socket or terminal outside the agent's confinement.
//!
//! - `victim SECRET_FILE`: not an attack: the process the attacks aim at. It keeps a buffer
//!   holding `UNTOUCHED`, opens `SECRET_FILE` and keeps it open, prints
//!   `{"pid":..,"addr":..,"fd":..}`, then for every line on stdin prints `{"buffer":"..."}`
//!   (the buffer's contents now); it exits at the end of stdin.
//! - `ptrace-attach PID`: `PTRACE_ATTACH` (then `PTRACE_SEIZE`) to PID.
//! - `process-vm PID ADDR`: `process_vm_writev` of `OVERWRITTEN` to ADDR in PID, then
//!   `process_vm_readv` from it.
//! - `pidfd-getfd PID FD`: `pidfd_open(PID)`, `pidfd_getfd` of its FD, and a read of what it got
//!   (printed as `{"stolen":"..."}`).
//! - `kill PID SIG`: `kill(PID, SIG)`.
//! - `proc-read PID`: reads `/proc/PID/environ` (printed as `{"environ":"..."}`) and reads the
//!   links `/proc/PID/root` and `/proc/PID/cwd`.
//! - `traceme`: `PTRACE_TRACEME` (the parent, `oxd run`, would become the tracer).
//! - `tiocsti TEXT`: `TIOCSTI` of each byte of TEXT into fd 0, then in a child in a new session
//!   that makes fd 0 its controlling terminal (`TIOCSCTTY`) first.
//! - `inside`: acts on its own child: `kill(child, SIGTERM)` after a `ptrace` attach and a
//!   `process_vm_readv`; the child's end is printed as `{"child_signal":N}`.
//! - `unix-connect ADDR`: connects a stream socket to ADDR (a path, or `@name` for an abstract
//!   name) and sends `HELLO`.
//! - `unix-send ADDR`: sends the datagram `HELLO` to ADDR.
//! - `unix-reach stream|dgram ADDR...`: for each ADDR (a path, reached through whatever
//!   symlink, hard link or bind mount names it, or `@name`), connects a stream socket and sends
//!   `HELLO` (steps `connect:ADDR`, `send:ADDR`), or sends the datagram `HELLO`
//!   (step `sendto:ADDR`).

use std::{
    io::{BufRead as _, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use crate::{check, step, Outcome};

/// What the victim's buffer holds until someone writes into it.
const UNTOUCHED: &[u8; 16] = b"UNTOUCHED-------";
/// What an attacker writes into it.
const OVERWRITTEN: &[u8; 16] = b"OVERWRITTEN-----";
/// Memory the `inside` technique reads in its child (same address in both after fork).
static SHARED: [u8; 8] = *b"INSIDE!!";

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let outcome = match (technique, args) {
        ("victim", [secret]) => victim(secret),
        ("ptrace-attach", [pid]) => with_pid(pid, ptrace_attach),
        ("process-vm", [pid, addr]) => match addr.parse::<usize>() {
            Ok(addr) => with_pid(pid, |pid| process_vm(pid, addr)),
            Err(_) => Outcome::Usage(format!("bad address {addr:?}")),
        },
        ("pidfd-getfd", [pid, fd]) => match fd.parse::<i32>() {
            Ok(fd) => with_pid(pid, |pid| pidfd_getfd(pid, fd)),
            Err(_) => Outcome::Usage(format!("bad fd {fd:?}")),
        },
        ("kill", [pid, sig]) => match sig.parse::<i32>() {
            Ok(sig) => with_pid(pid, |pid| {
                // SAFETY: a plain system call.
                step("kill", &check(unsafe { libc::kill(pid, sig) }.into()));
                Outcome::Done
            }),
            Err(_) => Outcome::Usage(format!("bad signal {sig:?}")),
        },
        ("proc-read", [pid]) => with_pid(pid, proc_read),
        ("traceme", []) => {
            // SAFETY: a plain system call about this process.
            let ret = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            step("traceme", &check(ret));
            Outcome::Done
        }
        ("tiocsti", [text]) => tiocsti(text.as_bytes()),
        ("inside", []) => inside(),
        ("unix-connect", [addr]) => unix(addr, libc::SOCK_STREAM),
        ("unix-send", [addr]) => unix(addr, libc::SOCK_DGRAM),
        ("unix-reach", [kind, addrs @ ..]) if !addrs.is_empty() => match kind.as_str() {
            "stream" => unix_reach(addrs, libc::SOCK_STREAM),
            "dgram" => unix_reach(addrs, libc::SOCK_DGRAM),
            _ => Outcome::Usage(format!("unknown socket kind {kind:?}")),
        },
        (
            "victim" | "ptrace-attach" | "process-vm" | "pidfd-getfd" | "kill" | "proc-read"
            | "traceme" | "tiocsti" | "inside" | "unix-connect" | "unix-send" | "unix-reach",
            _,
        ) => Outcome::Usage("wrong arguments (see tests/attacker/ipc.rs)".into()),
        _ => return None,
    };
    Some(outcome)
}

fn with_pid(pid: &str, f: impl FnOnce(libc::pid_t) -> Outcome) -> Outcome {
    match pid.parse() {
        Ok(pid) => f(pid),
        Err(_) => Outcome::Usage(format!("bad pid {pid:?}")),
    }
}

fn print(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Makes this process dumpable again: dropping from root to `--as` cleared the flag, and a
/// process that is not dumpable is out of ordinary ptrace reach whatever oxd decides (an
/// ordinary user's processes are dumpable).
fn dumpable() -> Result<(), Outcome> {
    // SAFETY: a plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) } != 0 {
        return Err(Outcome::Setup(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn victim(secret: &str) -> Outcome {
    if let Err(failed) = dumpable() {
        return failed;
    }
    let buffer: Box<[u8; 16]> = Box::new(*UNTOUCHED);
    let file = match std::fs::File::open(secret) {
        Ok(file) => file,
        Err(e) => return Outcome::Setup(format!("cannot open {secret}: {e}")),
    };
    print(&serde_json::json!({
        "pid": std::process::id(),
        "addr": buffer.as_ptr() as usize,
        "fd": file.as_raw_fd(),
    }));
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        // SAFETY: reading our own buffer; volatile, since another process may have written it.
        let now: [u8; 16] = unsafe { std::ptr::read_volatile(buffer.as_ptr().cast()) };
        print(&serde_json::json!({ "buffer": String::from_utf8_lossy(&now) }));
    }
    drop(file);
    Outcome::Done
}

fn ptrace_attach(pid: libc::pid_t) -> Outcome {
    for (name, request) in [
        ("ptrace-attach", libc::PTRACE_ATTACH),
        ("ptrace-seize", libc::PTRACE_SEIZE),
    ] {
        // SAFETY: a plain system call; a successful attach is undone at once.
        let ret = unsafe { libc::ptrace(request, pid, 0, 0) };
        step(name, &check(ret));
        if ret == 0 {
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
        }
    }
    Outcome::Done
}

fn process_vm(pid: libc::pid_t, addr: usize) -> Outcome {
    let mut data = *OVERWRITTEN;
    let local = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the iovecs describe our own buffer and an address in the other process.
    let ret = unsafe { libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0) };
    step("process_vm_writev", &check(ret as libc::c_long));
    let mut read = [0u8; 16];
    let local = libc::iovec {
        iov_base: read.as_mut_ptr().cast(),
        iov_len: read.len(),
    };
    // SAFETY: as above.
    let ret = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    step("process_vm_readv", &check(ret as libc::c_long));
    if ret > 0 {
        print(&serde_json::json!({ "read": String::from_utf8_lossy(&read) }));
    }
    Outcome::Done
}

fn pidfd_getfd(pid: libc::pid_t, fd: i32) -> Outcome {
    // SAFETY: plain system calls.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Outcome::Setup(format!(
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    let stolen = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    step("pidfd_getfd", &check(stolen));
    if let Some(stolen) = i32::try_from(stolen).ok().filter(|fd| *fd >= 0) {
        // SAFETY: the kernel just gave us this descriptor.
        let mut file = unsafe { std::fs::File::from_raw_fd(stolen) };
        let mut text = String::new();
        let result = file.read_to_string(&mut text);
        step("read-stolen", &result);
        print(&serde_json::json!({ "stolen": text }));
    }
    Outcome::Done
}

fn proc_read(pid: libc::pid_t) -> Outcome {
    let environ = std::fs::read(format!("/proc/{pid}/environ"));
    step("read-environ", &environ);
    if let Ok(environ) = environ {
        print(&serde_json::json!({ "environ": String::from_utf8_lossy(&environ) }));
    }
    for link in ["root", "cwd"] {
        let target = std::fs::read_link(format!("/proc/{pid}/{link}"));
        step(&format!("readlink-{link}"), &target);
    }
    Outcome::Done
}

fn tiocsti(text: &[u8]) -> Outcome {
    let push = |name: &str| {
        let mut result = Ok(0);
        for byte in text {
            // SAFETY: TIOCSTI reads one byte from the pointer.
            result =
                check(unsafe { libc::ioctl(0, libc::TIOCSTI, std::ptr::from_ref(byte)) }.into());
            if result.is_err() {
                break;
            }
        }
        step(name, &result);
    };
    push("tiocsti");
    // A terminal that is nobody's controlling terminal can be made ours in a new session.
    // SAFETY: the child only makes system calls and exits.
    match unsafe { libc::fork() } {
        -1 => Outcome::Setup(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: plain system calls in the child.
            unsafe {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            push("tiocsti-new-session");
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &raw mut status, 0) };
            Outcome::Done
        }
    }
}

fn inside() -> Outcome {
    if let Err(failed) = dumpable() {
        return failed;
    }
    // A child to trace: seized, then killed (a tracee that is not stopped cannot be detached).
    let traced = match fork_pausing() {
        Ok(child) => child,
        Err(failed) => return failed,
    };
    // SAFETY: plain system calls on our own child.
    unsafe {
        let ret = libc::ptrace(libc::PTRACE_SEIZE, traced, 0, 0);
        step("ptrace-seize-child", &check(ret));
        libc::kill(traced, libc::SIGKILL);
        libc::waitpid(traced, std::ptr::null_mut(), 0);
    }
    // A child to read and signal.
    let child = match fork_pausing() {
        Ok(child) => child,
        Err(failed) => return failed,
    };
    let mut word = [0u8; 8];
    let local = libc::iovec {
        iov_base: word.as_mut_ptr().cast(),
        iov_len: word.len(),
    };
    let remote = libc::iovec {
        iov_base: std::ptr::addr_of!(SHARED) as *mut libc::c_void,
        iov_len: word.len(),
    };
    // SAFETY: reading a static that the child shares with us, into our own buffer.
    let ret =
        unsafe { libc::process_vm_readv(child, &raw const local, 1, &raw const remote, 1, 0) };
    step("process_vm_readv-child", &check(ret as libc::c_long));
    // SAFETY: as above.
    step(
        "kill-child",
        &check(unsafe { libc::kill(child, libc::SIGTERM) }.into()),
    );
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &raw mut status, 0) };
    let signal = if libc::WIFSIGNALED(status) {
        libc::WTERMSIG(status)
    } else {
        0
    };
    print(&serde_json::json!({ "child_signal": signal }));
    Outcome::Done
}

/// Forks a child that waits for signals until one ends it.
fn fork_pausing() -> Result<libc::pid_t, Outcome> {
    // SAFETY: the child only pauses until it is killed.
    match unsafe { libc::fork() } {
        -1 => Err(Outcome::Setup(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        ))),
        0 => loop {
            // SAFETY: a plain system call.
            unsafe { libc::pause() };
        },
        child => Ok(child),
    }
}

/// A `sockaddr_un` for `addr` (`@name`: abstract) and its length.
fn sockaddr_un(addr: &str) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or_default();
    let bytes: Vec<u8> = match addr.strip_prefix('@') {
        Some(name) => std::iter::once(0).chain(name.bytes()).collect(),
        None => addr.bytes().collect(),
    };
    if bytes.len() >= sun.sun_path.len() {
        return None;
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(&bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len();
    Some((sun, libc::socklen_t::try_from(len).ok()?))
}

fn unix(addr: &str, kind: libc::c_int) -> Outcome {
    let Some((sun, len)) = sockaddr_un(addr) else {
        return Outcome::Usage(format!("address too long: {addr:?}"));
    };
    // SAFETY: plain system calls on a socket of ours, with a valid address.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, kind, 0);
        if fd < 0 {
            return Outcome::Setup(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let sa = std::ptr::from_ref(&sun).cast::<libc::sockaddr>();
        if kind == libc::SOCK_STREAM {
            step("connect", &check(libc::connect(fd, sa, len).into()));
            let ret = libc::send(fd, b"HELLO".as_ptr().cast(), 5, libc::MSG_NOSIGNAL);
            step("send", &check(ret as libc::c_long));
        } else {
            let ret = libc::sendto(fd, b"HELLO".as_ptr().cast(), 5, 0, sa, len);
            step("sendto", &check(ret as libc::c_long));
        }
        libc::close(fd);
    }
    Outcome::Done
}

fn unix_reach(addrs: &[String], kind: libc::c_int) -> Outcome {
    for addr in addrs {
        let Some((sun, len)) = sockaddr_un(addr) else {
            return Outcome::Usage(format!("address too long: {addr:?}"));
        };
        // SAFETY: plain system calls on a socket of ours, with a valid address.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, kind, 0);
            if fd < 0 {
                return Outcome::Setup(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let sa = std::ptr::from_ref(&sun).cast::<libc::sockaddr>();
            if kind == libc::SOCK_STREAM {
                let connected = check(libc::connect(fd, sa, len).into());
                step(&format!("connect:{addr}"), &connected);
                if connected.is_ok() {
                    let ret = libc::send(fd, b"HELLO".as_ptr().cast(), 5, libc::MSG_NOSIGNAL);
                    step(&format!("send:{addr}"), &check(ret as libc::c_long));
                }
            } else {
                let ret = libc::sendto(fd, b"HELLO".as_ptr().cast(), 5, 0, sa, len);
                step(&format!("sendto:{addr}"), &check(ret as libc::c_long));
            }
            libc::close(fd);
        }
    }
    Outcome::Done
}
