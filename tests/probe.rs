//! `oxd-probe`: performs actions as a confined agent would and reports, one JSON line per
//! action, whether the kernel let each one happen and with which errno.
//!
//! Actions (any number, in order):
//! - `exec:PATH` runs PATH (no arguments) and waits for it;
//! - `read:PATH` / `write:PATH` / `readwrite:PATH` opens PATH for reading, writing (creating it
//!   if missing, never truncating) or both, and closes it;
//! - `map:PATH` opens PATH for reading and maps its first page `PROT_READ | PROT_EXEC`;
//! - `mprotect:PATH` opens PATH for reading, maps its first page `PROT_READ`, then makes it
//!   `PROT_READ | PROT_EXEC` (the result reported is the first failure: open, mmap, mprotect);
//! - `connect:IP:PORT` / `connect:[IPV6]:PORT` opens a TCP connection;
//! - `udp:IP:PORT` sends one datagram from an unconnected UDP socket;
//! - `retry:SECONDS:connect:IP:PORT` (or `udp:`) tries every 50 ms until it succeeds, for at
//!   most SECONDS, and reports once: `ok`, `attempts`, and the last errno;
//! - `times:N:connect:IP:PORT` / `times:N:udp:IP:PORT` does that N times (each datagram from a
//!   new socket) and reports once: `allowed`, `eperm` (refused with `EPERM`) and `other`
//!   (failed otherwise) counts;
//! - `hold:N:connect:IP:PORT` / `hold:N:udp:IP:PORT` opens N sockets (TCP connections, or UDP
//!   sockets that each send one datagram) and keeps those that succeed open; then (UDP) sends
//!   again from the first one kept (`resend_ok`), closes one kept socket and opens one more
//!   (`after_close_ok`, `after_close_errno`), and closes them all. Reports once, with the
//!   `allowed`, `eperm` and `other` counts of the N;
//! - `keep:N:DIR:connect:IP:PORT` (or `udp:`) opens N sockets as `hold` does, reports the counts,
//!   creates `DIR/held` and keeps them open until `DIR/release` exists (at most 120 s);
//! - `udp-switch:A,B` (two `IP:PORT`s): socket S0 sends to B; socket S1 connects to A, then to
//!   B; socket S2 connects to A. Reports `s0_send`, `s1_connect_a`, `s1_connect_b`,
//!   `s2_connect_a`, each `null` on success or the errno;
//! - `socket:KIND` creates (and closes) an inet socket of KIND: `icmp4`/`icmp6` (ping sockets),
//!   `raw4`/`raw6` (raw ICMP sockets), `udplite4`/`udplite6` (a protocol other than TCP/UDP);
//! - `subcgroup:NAME` creates cgroup NAME below the probe's own cgroup and moves the probe into
//!   it;
//! - `wait:FILE` waits (up to 120 s) until FILE exists;
//! - `sleep:MS` sleeps MS milliseconds;
//! - `flood:N:PATH` opens PATH for reading N times (closing it each time) and reports once: the
//!   first failure, or success;
//! - `forks:N` forks up to N children that wait (on a pipe) until told to exit, stopping at
//!   the first fork that fails; reports `forked` (how many succeeded), the failure's errno,
//!   and `after_exit_ok`: whether a fork succeeds again once those children have exited;
//! - `until-denied:PATH` opens PATH for reading (closing it each time) until an open fails, for
//!   at most 120 s, and reports once: `opened` (how many succeeded) and the failure's errno;
//! - `repeat:FILE` performs the actions after it round after round until FILE exists (checked
//!   before each round), then ends the probe;
//! - `userns` creates a user namespace (`unshare(CLONE_NEWUSER)`) in a forked child;
//! - `chroot:DIR` chroots to DIR in a forked child;
//! - `mount:DIR` mounts a tmpfs on DIR; `umount:DIR` unmounts DIR (`umount2`, no flags);
//! - `ptrace:PID:ADDR` reads one byte at ADDR (hex) of process PID with `process_vm_readv`;
//! - `ptrace-child` does the same to a child it forks (at an address valid in both), and
//!   `signal-child:SIG` sends SIG to such a child (both report the child's pid as `peer`);
//! - `signal:PID:SIG` sends SIG to PID (`kill`);
//! - `tiocsti` pushes one byte into a new pty's input with `TIOCSTI`;
//! - `setown:PID` sets the owner of a pipe's read end to PID (`self`: the probe) with
//!   `fcntl(F_SETOWN)`.
//!
//! Output: `{"action":"exec:/usr/bin/id","ok":false,"errno":1}` or
//! `{"action":"exec:/usr/bin/true","ok":true,"status":0}`.

use std::{
    fs::OpenOptions,
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

fn report(action: &str, result: Result<Option<i32>, std::io::Error>) {
    let line = match result {
        Ok(status) => serde_json::json!({ "action": action, "ok": true, "status": status }),
        Err(e) => serde_json::json!({
            "action": action,
            "ok": false,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Creates a cgroup below the probe's own and moves the probe into it.
fn join_subcgroup(name: &str) -> std::io::Result<()> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| std::io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).map(str::to_owned))?
        })
        .ok_or_else(|| std::io::Error::other("no cgroup2 mount"))?;
    let dir = Path::new(&mount)
        .join(rel.trim_start_matches('/'))
        .join(name);
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// (family, type, protocol) of a `socket:KIND` action.
fn socket_kind(kind: &str) -> Option<(i32, i32, i32)> {
    Some(match kind {
        "icmp4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "icmp6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
        "raw4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "udplite4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        "udplite6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        _ => return None,
    })
}

/// The result of a system call that returns -1 and sets `errno` on failure.
fn check(ret: libc::c_long) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs `f` in a forked child and returns its result (the child exits with the errno, or 0).
fn in_child(f: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    // SAFETY: the probe is single-threaded; the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match f() {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(255),
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    check(unsafe { libc::waitpid(pid, &raw mut status, 0) }.into())?;
    match libc::WEXITSTATUS(status) {
        0 if libc::WIFEXITED(status) => Ok(()),
        code if libc::WIFEXITED(status) => Err(std::io::Error::from_raw_os_error(code)),
        _ => Err(std::io::Error::other(format!(
            "child ended with status {status:#x}"
        ))),
    }
}

/// A byte the probe and the children it forks have at the same address.
static PEEK: u8 = 0x6f;

/// Reads one byte at `addr` of process `pid` (`process_vm_readv`).
fn peek(pid: libc::pid_t, addr: usize) -> std::io::Result<()> {
    let mut byte = 0u8;
    let local = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: one iovec each, valid for the call; the remote one is only read by the kernel.
    check(unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) } as _)
}

/// Forks a child that waits until its pipe closes, calls `f` with its pid, then lets it end
/// (if `f` has not ended it) and reaps it; reports the result with the child's pid.
fn with_child(action: &str, f: impl FnOnce(libc::pid_t) -> std::io::Result<()>) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array.
    if let Err(e) = check(unsafe { libc::pipe(fds.as_mut_ptr()) }.into()) {
        report(action, Err(e));
        return;
    }
    // SAFETY: the probe is single-threaded; the child only reads its pipe and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: plain system calls on the child's own descriptors.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], (&raw mut byte).cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: closing descriptors this function owns.
    unsafe { libc::close(fds[0]) };
    let result = if pid < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        f(pid)
    };
    // SAFETY: closing the pipe ends the child, which is then reaped.
    unsafe {
        libc::close(fds[1]);
        if pid > 0 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let line = match result {
        Ok(()) => serde_json::json!({ "action": action, "ok": true, "peer": pid }),
        Err(e) => serde_json::json!({
            "action": action,
            "ok": false,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
            "peer": pid,
        }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Pushes one byte into the input of a new pty with `TIOCSTI`.
fn tiocsti() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain system calls; every descriptor is owned (and closed) by an `OwnedFd`.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        check(master.into())?;
        let master = OwnedFd::from_raw_fd(master);
        check(libc::grantpt(master.as_raw_fd()).into())?;
        check(libc::unlockpt(master.as_raw_fd()).into())?;
        let mut name = [0 as libc::c_char; 64];
        let ret = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if ret != 0 {
            return Err(std::io::Error::from_raw_os_error(ret));
        }
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check(slave.into())?;
        let slave = OwnedFd::from_raw_fd(slave);
        let byte = b'x';
        check(libc::ioctl(slave.as_raw_fd(), libc::TIOCSTI, &raw const byte).into())
    }
}

/// Makes `owner` the owner of a pipe's read end (`fcntl(F_SETOWN)`).
fn set_owner(owner: libc::pid_t) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array, both ends closed here.
    unsafe {
        check(libc::pipe(fds.as_mut_ptr()).into())?;
        let result = check(libc::fcntl(fds[0], libc::F_SETOWN, owner).into());
        libc::close(fds[0]);
        libc::close(fds[1]);
        result
    }
}

/// A NUL-terminated copy of `path`.
fn c_path(path: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path).map_err(std::io::Error::other)
}

/// The namespace and process actions (`userns`, `chroot:`, `mount:`, `umount:`, `ptrace:`,
/// `ptrace-child`, `signal-child:`, `signal:`, `tiocsti`, `setown:`); `false` if `action` is
/// none of them.
fn perform_process(action: &str) -> bool {
    let (kind, arg) = action.split_once(':').unwrap_or((action, ""));
    let result = match kind {
        "userns" => {
            // SAFETY: unshare(2) in the single-threaded child.
            in_child(|| check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()))
        }
        "chroot" => c_path(arg).and_then(|dir| {
            // SAFETY: chroot(2) on a NUL-terminated path, in the child.
            in_child(|| check(unsafe { libc::chroot(dir.as_ptr()) }.into()))
        }),
        "mount" => c_path(arg).and_then(|dir| {
            // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
            check(
                unsafe {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        dir.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                }
                .into(),
            )
        }),
        // SAFETY: umount2(2) on a NUL-terminated path.
        "umount" => {
            c_path(arg).and_then(|dir| check(unsafe { libc::umount2(dir.as_ptr(), 0) }.into()))
        }
        "ptrace" => match arg.split_once(':').and_then(|(pid, addr)| {
            Some((pid.parse().ok()?, usize::from_str_radix(addr, 16).ok()?))
        }) {
            Some((pid, addr)) => peek(pid, addr),
            None => Err(std::io::Error::other("ptrace:PID:ADDR")),
        },
        "ptrace-child" => {
            with_child(action, |pid| peek(pid, (&raw const PEEK) as usize));
            return true;
        }
        "signal-child" => {
            let sig = arg.parse().unwrap_or(libc::SIGTERM);
            // SAFETY: kill(2).
            with_child(action, |pid| check(unsafe { libc::kill(pid, sig) }.into()));
            return true;
        }
        "signal" => match arg
            .split_once(':')
            .and_then(|(pid, sig)| Some((pid.parse().ok()?, sig.parse().ok()?)))
        {
            // SAFETY: kill(2).
            Some((pid, sig)) => check(unsafe { libc::kill(pid, sig) }.into()),
            None => Err(std::io::Error::other("signal:PID:SIG")),
        },
        "tiocsti" => tiocsti(),
        "setown" => {
            let owner = if arg == "self" {
                // SAFETY: getpid(2).
                unsafe { libc::getpid() }
            } else {
                arg.parse().unwrap_or(-1)
            };
            set_owner(owner)
        }
        _ => return false,
    };
    report(action, result.map(|()| None));
    true
}

fn main() -> ExitCode {
    let actions: Vec<String> = std::env::args().skip(1).collect();
    if actions.is_empty() {
        eprintln!(
            "usage: oxd-probe exec:PATH | read:PATH | write:PATH | readwrite:PATH | \
             map:PATH | mprotect:PATH | connect:ADDR:PORT | udp:ADDR:PORT | socket:KIND | \
             subcgroup:NAME | wait:FILE | flood:N:PATH | userns | chroot:DIR | \
             mount:DIR | umount:DIR | ptrace:PID:ADDR | ptrace-child | signal-child:SIG | \
             signal:PID:SIG | tiocsti | setown:PID|self | until-denied:PATH | repeat:FILE ..."
        );
        return ExitCode::from(2);
    }
    for (i, action) in actions.iter().enumerate() {
        if let Some(stop) = action.strip_prefix("repeat:") {
            while !Path::new(stop).exists() {
                for action in &actions[i + 1..] {
                    if let Err(code) = perform(action) {
                        return code;
                    }
                }
            }
            return ExitCode::SUCCESS;
        }
        if let Err(code) = perform(action) {
            return code;
        }
    }
    ExitCode::SUCCESS
}

/// A change to the file system at `path` that leaves the tree as it was when allowed: `chmod`
/// to its own mode, `truncate` to its own length, `rename` onto itself, `mkdir` or `create`
/// (`O_CREAT|O_WRONLY`) of a new name, removed again.
fn change(kind: &str, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    match kind {
        "chmod" => {
            let mode = std::fs::symlink_metadata(path)?.permissions().mode();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        "truncate" => std::fs::metadata(path).and_then(|m| {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
            let len = libc::off_t::try_from(m.len()).unwrap_or(libc::off_t::MAX);
            // SAFETY: truncate(2) on a NUL-terminated path.
            if unsafe { libc::truncate(c.as_ptr(), len) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }),
        "rename" => std::fs::rename(path, path),
        "utimes" => same_times(path),
        "setxattr" => mode_acl(path),
        "removexattr" => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
            // SAFETY: removexattr(2) on NUL-terminated strings.
            let ret = unsafe { libc::removexattr(c.as_ptr(), c"system.posix_acl_access".as_ptr()) };
            if ret == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        "mkdir" => std::fs::create_dir(path).and_then(|()| std::fs::remove_dir(path)),
        _ => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|_| std::fs::remove_file(path)),
    }
}

/// Sets the access and modification times of `path` to the ones it has.
fn same_times(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: utimensat(2) on a NUL-terminated path with times that outlive the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets the access ACL of `path` to the one its mode implies (`user::`, `group::`, `other::`),
/// which the kernel stores as the mode alone: nothing changes.
fn mode_acl(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)?.permissions().mode();
    let mut blob = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, mode >> 6), (0x04, mode >> 3), (0x20, mode)] {
        blob.extend_from_slice(&tag.to_le_bytes());
        blob.extend_from_slice(&u16::try_from(perm & 7).unwrap_or(0).to_le_bytes());
        blob.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: setxattr(2) on NUL-terminated strings and a buffer that outlive the call.
    let ret = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The kinds of [`change`].
const CHANGES: [&str; 8] = [
    "chmod",
    "truncate",
    "rename",
    "mkdir",
    "create",
    "utimes",
    "setxattr",
    "removexattr",
];

/// Performs one action and reports it; `Err` ends the probe with that exit code.
fn perform(action: &str) -> Result<(), ExitCode> {
    if perform_process(action) {
        return Ok(());
    }
    if let Some(path) = action.strip_prefix("exec:") {
        let result = Command::new(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map(|s| s.code());
        report(action, result);
    } else if let Some((mode, path)) = action
        .split_once(':')
        .filter(|(m, _)| matches!(*m, "read" | "write" | "readwrite"))
    {
        let mut options = OpenOptions::new();
        match mode {
            "read" => options.read(true),
            "write" => options.write(true).create(true),
            _ => options.read(true).write(true).create(true),
        };
        report(action, options.open(path).map(|_| None));
    } else if let Some((kind, path)) = action
        .split_once(':')
        .filter(|(k, _)| matches!(*k, "map" | "mprotect"))
    {
        report(
            action,
            map_executable(path, kind == "mprotect").map(|()| None),
        );
    } else if let Some((seconds, rest)) = action
        .strip_prefix("retry:")
        .and_then(|rest| rest.split_once(':'))
    {
        retry(action, seconds, rest)?;
    } else if let Some((count, rest)) = action
        .strip_prefix("times:")
        .and_then(|rest| rest.split_once(':'))
    {
        times(action, count, rest)?;
    } else if let Some(pair) = action.strip_prefix("udp-switch:") {
        udp_switch(action, pair)?;
    } else if let Some(ms) = action.strip_prefix("sleep:") {
        sleep(action, ms)?;
    } else if let Some(rest) = action.strip_prefix("hold:") {
        hold(action, rest)?;
    } else if let Some(rest) = action.strip_prefix("keep:") {
        keep(action, rest)?;
    } else if let Some((kind, addr)) = action
        .split_once(':')
        .filter(|(k, _)| matches!(*k, "connect" | "udp"))
    {
        let addr = parse_addr(addr)?;
        report(action, net_once(kind, addr).map(|()| None));
    } else if let Some(kind) = action.strip_prefix("socket:") {
        let Some((family, kind, protocol)) = socket_kind(kind) else {
            eprintln!("oxd-probe: unknown socket kind in {action}");
            return Err(ExitCode::from(2));
        };
        // SAFETY: plain system calls on a descriptor this function owns.
        let result = unsafe {
            let fd = libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol);
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                libc::close(fd);
                Ok(None)
            }
        };
        report(action, result);
    } else if let Some((kind, path)) = action.split_once(':').filter(|(k, _)| CHANGES.contains(k)) {
        report(action, change(kind, Path::new(path)).map(|()| None));
    } else if let Some(name) = action.strip_prefix("subcgroup:") {
        report(action, join_subcgroup(name).map(|()| None));
    } else if let Some(file) = action.strip_prefix("wait:") {
        let deadline = Instant::now() + Duration::from_mins(2);
        while !Path::new(file).exists() {
            if Instant::now() > deadline {
                eprintln!("oxd-probe: timed out waiting for {file}");
                return Err(ExitCode::from(3));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        report(action, Ok(None));
    } else if let Some((count, path)) = action
        .strip_prefix("flood:")
        .and_then(|rest| rest.split_once(':'))
    {
        flood(action, count, path)?;
    } else if let Some(count) = action.strip_prefix("forks:") {
        forks(action, count)?;
    } else if let Some(path) = action.strip_prefix("until-denied:") {
        until_denied(action, path);
    } else {
        eprintln!("oxd-probe: unknown action {action}");
        return Err(ExitCode::from(2));
    }
    Ok(())
}

/// `retry:SECONDS:KIND:ADDR` (see the module documentation).
fn retry(action: &str, seconds: &str, rest: &str) -> Result<(), ExitCode> {
    let (Ok(seconds), Some((kind, addr))) = (seconds.parse::<u64>(), rest.split_once(':')) else {
        eprintln!("oxd-probe: bad retry {action}");
        return Err(ExitCode::from(2));
    };
    let addr = parse_addr(addr)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut attempts = 0u32;
    let result = loop {
        attempts += 1;
        match net_once(kind, addr) {
            Ok(()) => break Ok(()),
            Err(e) if Instant::now() >= deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let line = match result {
        Ok(()) => serde_json::json!({ "action": action, "ok": true, "attempts": attempts }),
        Err(e) => serde_json::json!({
            "action": action, "ok": false, "attempts": attempts, "errno": e.raw_os_error(),
        }),
    };
    println!("{line}");
    Ok(())
}

/// `times:N:KIND:ADDR` (see the module documentation).
fn times(action: &str, count: &str, rest: &str) -> Result<(), ExitCode> {
    let (Ok(count), Some((kind, addr))) = (count.parse::<u32>(), rest.split_once(':')) else {
        eprintln!("oxd-probe: bad repetition {action}");
        return Err(ExitCode::from(2));
    };
    let addr = parse_addr(addr)?;
    let (mut allowed, mut eperm, mut other) = (0u32, 0u32, 0u32);
    for _ in 0..count {
        match net_once(kind, addr) {
            Ok(()) => allowed += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => other += 1,
        }
    }
    let line = serde_json::json!({
        "action": action, "ok": true, "allowed": allowed, "eperm": eperm, "other": other,
    });
    println!("{line}");
    Ok(())
}

fn parse_addr(addr: &str) -> Result<SocketAddr, ExitCode> {
    addr.parse().map_err(|e| {
        eprintln!("oxd-probe: bad address {addr}: {e}");
        ExitCode::from(2)
    })
}

/// A socket `hold` and `keep` keep open.
enum Held {
    Tcp(#[expect(dead_code, reason = "kept open until dropped")] TcpStream),
    Udp(UdpSocket),
}

/// Opens one socket as `hold` does: a TCP connection, or a UDP socket that sent a datagram.
fn open_held(kind: &str, addr: SocketAddr) -> std::io::Result<Held> {
    if kind == "connect" {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map(Held::Tcp)
    } else {
        let local = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(local)?;
        socket.send_to(b"oxd", addr)?;
        Ok(Held::Udp(socket))
    }
}

/// Opens `count` sockets, keeping the ones that succeed: them, and the counts (allowed,
/// refused with EPERM, failed otherwise).
fn open_many(kind: &str, addr: SocketAddr, count: u32) -> (Vec<Held>, u32, u32) {
    let (mut held, mut eperm, mut other) = (Vec::new(), 0u32, 0u32);
    for _ in 0..count {
        match open_held(kind, addr) {
            Ok(socket) => held.push(socket),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => other += 1,
        }
    }
    (held, eperm, other)
}

/// `udp-switch:A,B` (see the module documentation).
fn udp_switch(action: &str, pair: &str) -> Result<(), ExitCode> {
    let Some((a, b)) = pair.split_once(',') else {
        eprintln!("oxd-probe: bad udp-switch {action}");
        return Err(ExitCode::from(2));
    };
    let (a, b) = (parse_addr(a)?, parse_addr(b)?);
    let errno = |r: std::io::Result<()>| r.err().map(|e| e.raw_os_error().unwrap_or(-1));
    let socket = || UdpSocket::bind(if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" });
    let s0 = socket().and_then(|s| s.send_to(b"oxd", b).map(|_| s));
    let s1 = socket();
    let s1_a = s1
        .as_ref()
        .map_err(|e| std::io::Error::from(e.kind()))
        .and_then(|s| s.connect(a));
    let s1_b = s1
        .as_ref()
        .map_err(|e| std::io::Error::from(e.kind()))
        .and_then(|s| s.connect(b));
    let s2 = socket();
    let s2_a = s2
        .as_ref()
        .map_err(|e| std::io::Error::from(e.kind()))
        .and_then(|s| s.connect(a));
    let line = serde_json::json!({
        "action": action, "ok": true,
        "s0_send": s0.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1)),
        "s1_connect_a": errno(s1_a), "s1_connect_b": errno(s1_b), "s2_connect_a": errno(s2_a),
    });
    drop((s0, s1, s2));
    println!("{line}");
    Ok(())
}

/// `sleep:MS` (see the module documentation).
fn sleep(action: &str, ms: &str) -> Result<(), ExitCode> {
    let Ok(ms) = ms.parse::<u64>() else {
        eprintln!("oxd-probe: bad sleep {action}");
        return Err(ExitCode::from(2));
    };
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// `hold:N:KIND:ADDR` (see the module documentation).
fn hold(action: &str, rest: &str) -> Result<(), ExitCode> {
    let (count, rest) = rest.split_once(':').unwrap_or((rest, ""));
    let (Ok(count), Some((kind, addr))) = (count.parse::<u32>(), rest.split_once(':')) else {
        eprintln!("oxd-probe: bad hold {action}");
        return Err(ExitCode::from(2));
    };
    let addr = parse_addr(addr)?;
    let (mut held, eperm, other) = open_many(kind, addr, count);
    let allowed = held.len();
    let resend_ok = match held.first() {
        Some(Held::Udp(socket)) => Some(socket.send_to(b"oxd", addr).is_ok()),
        _ => None,
    };
    held.pop();
    let again = open_held(kind, addr);
    let line = serde_json::json!({
        "action": action, "ok": true, "allowed": allowed, "eperm": eperm, "other": other,
        "resend_ok": resend_ok,
        "after_close_ok": again.is_ok(),
        "after_close_errno": again.as_ref().err().and_then(std::io::Error::raw_os_error),
    });
    drop(again);
    drop(held);
    println!("{line}");
    Ok(())
}

/// `keep:N:DIR:KIND:ADDR` (see the module documentation).
fn keep(action: &str, rest: &str) -> Result<(), ExitCode> {
    let (count, rest) = rest.split_once(':').unwrap_or((rest, ""));
    let parts = rest.split_once(':').and_then(|(dir, rest)| {
        let (kind, addr) = rest.split_once(':')?;
        Some((dir, kind, addr))
    });
    let (Ok(count), Some((dir, kind, addr))) = (count.parse::<u32>(), parts) else {
        eprintln!("oxd-probe: bad keep {action}");
        return Err(ExitCode::from(2));
    };
    let addr = parse_addr(addr)?;
    let (held, eperm, other) = open_many(kind, addr, count);
    let line = serde_json::json!({
        "action": action, "ok": true, "allowed": held.len(), "eperm": eperm, "other": other,
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let dir = Path::new(dir);
    if let Err(e) = std::fs::write(dir.join("held"), b"") {
        eprintln!("oxd-probe: cannot create {}/held: {e}", dir.display());
        return Err(ExitCode::from(2));
    }
    let deadline = Instant::now() + Duration::from_mins(2);
    while !dir.join("release").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    Ok(())
}

/// One `connect` (TCP, closed at once) or one datagram from a new unconnected UDP socket.
fn net_once(kind: &str, addr: SocketAddr) -> std::io::Result<()> {
    if kind == "connect" {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map(drop)
    } else {
        let local = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        UdpSocket::bind(local)
            .and_then(|s| s.send_to(b"oxd", addr))
            .map(drop)
    }
}

/// `flood:N:PATH` (see the module documentation).
fn flood(action: &str, count: &str, path: &str) -> Result<(), ExitCode> {
    let Ok(count) = count.parse::<u64>() else {
        eprintln!("oxd-probe: bad count in {action}");
        return Err(ExitCode::from(2));
    };
    let result = (0..count).try_for_each(|_| OpenOptions::new().read(true).open(path).map(drop));
    report(action, result.map(|()| None));
    Ok(())
}

/// `forks:N` (see the module documentation).
fn forks(action: &str, count: &str) -> Result<(), ExitCode> {
    /// Forks a child that waits until `hold` gives EOF, then exits; its pid or the errno.
    fn child(hold: libc::c_int, release: libc::c_int) -> Result<libc::pid_t, i32> {
        // SAFETY: this program has one thread; the child only calls async-signal-safe
        // functions (close, read, _exit).
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
            0 => unsafe {
                libc::close(release);
                let mut byte = 0u8;
                libc::read(hold, (&raw mut byte).cast(), 1);
                libc::_exit(0)
            },
            pid => Ok(pid),
        }
    }
    let Ok(count) = count.parse::<u32>() else {
        eprintln!("oxd-probe: bad count in {action}");
        return Err(ExitCode::from(2));
    };
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0, "pipe");
    let mut children = Vec::new();
    let mut failure = None;
    for _ in 0..count {
        match child(pipe[0], pipe[1]) {
            Ok(pid) => children.push(pid),
            Err(errno) => {
                failure = Some(errno);
                break;
            }
        }
    }
    // SAFETY: closing our ends lets every child read EOF and exit; each is reaped.
    unsafe {
        libc::close(pipe[1]);
        for pid in &children {
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
    }
    let again = child(pipe[0], -1).map(|pid| {
        // SAFETY: as above; the write end is closed, so the child exits at once.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    });
    // SAFETY: our read end, no longer needed.
    unsafe { libc::close(pipe[0]) };
    let line = serde_json::json!({
        "action": action,
        "ok": failure.is_none(),
        "forked": children.len(),
        "errno": failure,
        "after_exit_ok": again.is_ok(),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    Ok(())
}

/// `until-denied:PATH`: opens PATH until an open fails (for at most two minutes) and reports
/// how many succeeded, and the failure.
fn until_denied(action: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_mins(2);
    let mut opened = 0u64;
    let failure = loop {
        match OpenOptions::new().read(true).open(path) {
            Ok(_) => opened += 1,
            Err(e) => break Some(e),
        }
        if opened.is_multiple_of(256) && Instant::now() > deadline {
            break None;
        }
    };
    let line = serde_json::json!({
        "action": action,
        "ok": failure.is_none(),
        "opened": opened,
        "errno": failure.as_ref().and_then(std::io::Error::raw_os_error),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Maps the first page of `path` executable: directly, or (`mprotect`) readable first and then
/// executable. The mapping is undone before returning.
fn map_executable(path: &str, mprotect: bool) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd as _;

    let file = OpenOptions::new().read(true).open(path)?;
    let first = if mprotect {
        libc::PROT_READ
    } else {
        libc::PROT_READ | libc::PROT_EXEC
    };
    // SAFETY: a fresh mapping chosen by the kernel, checked, changed and unmapped only here.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            first,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let result =
            if mprotect && libc::mprotect(addr, 4096, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            };
        libc::munmap(addr, 4096);
        result
    }
}
