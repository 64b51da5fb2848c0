//! `oxd-bench-workload`: the loop `cargo xtask bench` times, run bare or confined by `oxd run`,
//! so that only the loop is measured, inside the (confined) process.
//!
//! Usage: `oxd-bench-workload OP ARG N`, OP one of
//! - `connect PORT N`: N times `socket` + `connect` to `127.0.0.1:PORT` + `close` (TCP, with
//!   `SO_LINGER` 0 so the close resets the connection and no port is left in `TIME_WAIT`);
//! - `open PATH N`: N times `open(PATH, O_RDONLY)` + `close`;
//! - `exec PATH N`: N times `fork` + `execv(PATH)` in the child + `waitpid`;
//! - `udp PORT N`: N one-byte `sendto`s to `127.0.0.1:PORT` from one unconnected UDP socket.
//!
//! And `oxd-bench-workload listen`: listens on `127.0.0.1` (a free port, backlog 4096), prints
//! the port on a line, then accepts and closes connections until killed: the connect figure's
//! listener, with a backlog the loop cannot fill (a full accept queue drops SYNs, and the
//! client's retry after a second would dwarf what is measured).
//!
//! A fourth argument `bpf-stats` adds `"bpf"` to the output: for every BPF program attached to
//! (or inherited by) the workload's cgroup, its name and how much its `run_time_ns` and
//! `run_cnt` (`bpf_prog_info`, counted while `kernel.bpf_stats_enabled` is 1) grew during the
//! loop: `[{"id":7,"name":"connect4","attach_type":10,"run_time_ns":T,"run_cnt":N}]`.
//!
//! Output, one JSON line: `{"op":"connect","iterations":N,"elapsed_ns":T,"errors":E}` with
//! `first_errno` when an iteration failed. The loop is timed with `CLOCK_MONOTONIC`
//! (`Instant`); the exit status is 0 when every iteration succeeded, 1 otherwise, 2 for a usage
//! error.

#![expect(
    clippy::cast_possible_truncation,
    reason = "the sizes of socket structures and AF_INET fit the C types they are passed as"
)]

use std::{ffi::CString, process::ExitCode, time::Instant};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `127.0.0.1:port` as a `sockaddr_in`.
fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// One TCP connect and close; the errno of the first failing call.
fn connect_once(addr: &libc::sockaddr_in) -> Result<(), i32> {
    // SAFETY: plain system calls on a descriptor this function owns; the pointers are to live
    // values of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let mut result = Ok(());
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        ) != 0
            || libc::connect(fd, (&raw const *addr).cast(), SOCKADDR_IN_LEN) != 0
        {
            result = Err(errno());
        }
        libc::close(fd);
        result
    }
}

fn open_once(path: &CString) -> Result<(), i32> {
    // SAFETY: `path` is a NUL-terminated string; the descriptor is closed at once.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        libc::close(fd);
    }
    Ok(())
}

fn exec_once(path: &CString) -> Result<(), i32> {
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: the child only calls async-signal-safe functions (`execv`, `_exit`) before it
    // is replaced or exits; `argv` is NULL-terminated and outlives the call.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(errno());
        }
        if pid == 0 {
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut status = 0;
        if libc::waitpid(pid, &raw mut status, 0) != pid {
            return Err(errno());
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            // Not an errno: the child failed (127: execv failed).
            return Err(-status);
        }
    }
    Ok(())
}

/// `listen`: never returns unless the listener cannot be set up.
fn listen() -> ExitCode {
    let addr = loopback(0);
    // SAFETY: plain system calls on descriptors this function owns; the pointers are to live
    // values of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let mut bound = addr;
        let mut len = SOCKADDR_IN_LEN;
        if fd < 0
            || libc::bind(fd, (&raw const addr).cast(), SOCKADDR_IN_LEN) != 0
            || libc::listen(fd, 4096) != 0
            || libc::getsockname(fd, (&raw mut bound).cast(), &raw mut len) != 0
        {
            eprintln!("cannot listen on 127.0.0.1: errno {}", errno());
            return ExitCode::FAILURE;
        }
        println!("{}", u16::from_be(bound.sin_port));
        let _ = std::io::Write::flush(&mut std::io::stdout());
        loop {
            let conn = libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            if conn >= 0 {
                libc::close(conn);
            }
        }
    }
}

/// `bpf(2)` with `attr` (its size passed as is).
fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> libc::c_long {
    // SAFETY: `attr` is a live buffer of the length passed; the kernel reads and writes at
    // most that many bytes of it, and any pointer written into it points to a live buffer.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    }
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// Every `enum bpf_attach_type` value up to here is tried on the cgroup (the kernel refuses
/// those that are not cgroup hooks).
const ATTACH_TYPES: u32 = 64;

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default())
}

/// One program's counters: (attach type, id, name, `run_time_ns`, `run_cnt`).
type ProgCounters = (u32, u32, String, u64, u64);

/// The programs in effect on the cgroup open as `cgroup` and their counters.
fn bpf_counters(cgroup: &std::fs::File) -> Result<Vec<ProgCounters>, String> {
    use std::os::fd::AsRawFd as _;
    let mut out = Vec::new();
    for attach_type in 0..ATTACH_TYPES {
        let mut ids = [0_u32; 64];
        // union bpf_attr, query: target_fd, attach_type, query_flags, attach_flags, prog_ids,
        // prog_cnt.
        let mut attr = [0_u8; 32];
        put_u32(&mut attr, 0, cgroup.as_raw_fd().cast_unsigned());
        put_u32(&mut attr, 4, attach_type);
        put_u32(&mut attr, 8, BPF_F_QUERY_EFFECTIVE);
        put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
        put_u32(&mut attr, 24, ids.len() as u32);
        if bpf(BPF_PROG_QUERY, &mut attr) != 0 {
            continue;
        }
        let count = u32::from_ne_bytes(attr[24..28].try_into().unwrap_or_default()) as usize;
        for &id in &ids[..count.min(ids.len())] {
            let mut attr = [0_u8; 12];
            put_u32(&mut attr, 0, id);
            let Ok(fd) = i32::try_from(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)) else {
                return Err(format!("cannot open program {id}: errno {}", errno()));
            };
            if fd < 0 {
                return Err(format!("cannot open program {id}: errno {}", errno()));
            }
            // struct bpf_prog_info: name at 64 (16 bytes), run_time_ns at 192, run_cnt at 200.
            let mut info = [0_u8; 232];
            let mut attr = [0_u8; 16];
            put_u32(&mut attr, 0, fd.cast_unsigned());
            put_u32(&mut attr, 4, info.len() as u32);
            put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
            let got = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
            let err = errno();
            // SAFETY: closes the descriptor opened above.
            unsafe { libc::close(fd) };
            if got != 0 {
                return Err(format!("cannot read program {id}'s info: errno {err}"));
            }
            let name = &info[64..80];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            out.push((
                attach_type,
                id,
                String::from_utf8_lossy(name).into_owned(),
                get_u64(&info, 192),
                get_u64(&info, 200),
            ));
        }
    }
    Ok(out)
}

/// The cgroup this process is in (cgroup v2), open.
fn own_cgroup() -> Result<std::fs::File, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("no cgroup v2 line in /proc/self/cgroup: {text:?}"))?;
    let mount = oxd::host::cgroup2_mount().map_err(|e| format!("no cgroup v2 mount: {e}"))?;
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::File::open(&dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))
}

/// What grew between `before` and `after`, as the output's `"bpf"` array.
fn counter_growth(before: &[ProgCounters], after: &[ProgCounters]) -> serde_json::Value {
    after
        .iter()
        .map(|(attach_type, id, name, time, count)| {
            let (t0, c0) = before
                .iter()
                .find(|b| b.0 == *attach_type && b.1 == *id)
                .map_or((0, 0), |b| (b.3, b.4));
            serde_json::json!({
                "id": id,
                "name": name,
                "attach_type": attach_type,
                "run_time_ns": time.saturating_sub(t0),
                "run_cnt": count.saturating_sub(c0),
            })
        })
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "one match over the operations, each a short loop, between the two snapshots"
)]
fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["listen"] {
        return listen();
    }
    let stats = args.len() == 4 && args[3] == "bpf-stats";
    if stats {
        args.pop();
    }
    let [op, arg, n] = args.as_slice() else {
        eprintln!("usage: oxd-bench-workload connect|open|exec|udp PORT|PATH N [bpf-stats]");
        return ExitCode::from(2);
    };
    let cgroup = match stats.then(own_cgroup).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = || cgroup.as_ref().map(bpf_counters).transpose();
    let before = match snapshot() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(iterations) = n.parse::<u64>() else {
        eprintln!("N must be a number, not {n:?}");
        return ExitCode::from(2);
    };
    let port = || arg.parse::<u16>().ok();
    let path = || CString::new(arg.as_bytes()).ok();
    let mut errors = 0_u64;
    let mut first_errno = None;
    let mut note = |r: Result<(), i32>| {
        if let Err(e) = r {
            errors += 1;
            first_errno.get_or_insert(e);
        }
    };
    let start;
    match op.as_str() {
        "connect" => {
            let Some(port) = port() else {
                eprintln!("connect needs a port, not {arg:?}");
                return ExitCode::from(2);
            };
            let addr = loopback(port);
            start = Instant::now();
            for _ in 0..iterations {
                note(connect_once(&addr));
            }
        }
        "open" | "exec" => {
            let Some(path) = path() else {
                eprintln!("{op} needs a path, not {arg:?}");
                return ExitCode::from(2);
            };
            let once = if op == "open" { open_once } else { exec_once };
            start = Instant::now();
            for _ in 0..iterations {
                note(once(&path));
            }
        }
        "udp" => {
            let Some(port) = port() else {
                eprintln!("udp needs a port, not {arg:?}");
                return ExitCode::from(2);
            };
            let addr = loopback(port);
            // SAFETY: a socket this function owns, sent to from a live buffer and address.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                eprintln!("socket: errno {}", errno());
                return ExitCode::FAILURE;
            }
            start = Instant::now();
            for _ in 0..iterations {
                // SAFETY: as above.
                let sent = unsafe {
                    libc::sendto(
                        fd,
                        b"x".as_ptr().cast(),
                        1,
                        0,
                        (&raw const addr).cast(),
                        SOCKADDR_IN_LEN,
                    )
                };
                note(if sent == 1 { Ok(()) } else { Err(errno()) });
            }
            // SAFETY: closes the socket opened above.
            unsafe { libc::close(fd) };
        }
        other => {
            eprintln!("unknown operation {other:?}: connect, open, exec or udp");
            return ExitCode::from(2);
        }
    }
    let elapsed = start.elapsed();
    let after = match snapshot() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = serde_json::json!({
        "op": op,
        "iterations": iterations,
        "elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        "errors": errors,
    });
    if let Some(e) = first_errno {
        out["first_errno"] = e.into();
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        out["bpf"] = counter_growth(b, a);
    }
    println!("{out}");
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
