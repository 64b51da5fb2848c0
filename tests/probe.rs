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
//! - `socket:KIND` creates (and closes) an inet socket of KIND: `icmp4`/`icmp6` (ping sockets),
//!   `raw4`/`raw6` (raw ICMP sockets), `udplite4`/`udplite6` (a protocol other than TCP/UDP);
//! - `subcgroup:NAME` creates cgroup NAME below the probe's own cgroup and moves the probe into
//!   it;
//! - `wait:FILE` waits (up to 120 s) until FILE exists;
//! - `flood:N:PATH` opens PATH for reading N times (closing it each time) and reports once: the
//!   first failure, or success;
//! - `repeat:FILE` performs the actions after it round after round until FILE exists (checked
//!   before each round), then ends the probe.
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

fn main() -> ExitCode {
    let actions: Vec<String> = std::env::args().skip(1).collect();
    if actions.is_empty() {
        eprintln!(
            "usage: oxd-probe exec:PATH | read:PATH | write:PATH | readwrite:PATH | \
             map:PATH | mprotect:PATH | connect:ADDR:PORT | udp:ADDR:PORT | socket:KIND | \
             subcgroup:NAME | wait:FILE | flood:N:PATH | \
             repeat:FILE ..."
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
    } else if let Some((kind, addr)) = action
        .split_once(':')
        .filter(|(k, _)| matches!(*k, "connect" | "udp"))
    {
        let addr: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("oxd-probe: bad address {addr}: {e}");
                return Err(ExitCode::from(2));
            }
        };
        let result = if kind == "connect" {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map(|_| None)
        } else {
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            UdpSocket::bind(local)
                .and_then(|s| s.send_to(b"oxd", addr))
                .map(|_| None)
        };
        report(action, result);
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
        let Ok(count) = count.parse::<u64>() else {
            eprintln!("oxd-probe: bad count in {action}");
            return Err(ExitCode::from(2));
        };
        let result =
            (0..count).try_for_each(|_| OpenOptions::new().read(true).open(path).map(drop));
        report(action, result.map(|()| None));
    } else {
        eprintln!("oxd-probe: unknown action {action}");
        return Err(ExitCode::from(2));
    }
    Ok(())
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
