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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["listen"] {
        return listen();
    }
    let [op, arg, n] = args.as_slice() else {
        eprintln!("usage: oxd-bench-workload connect|open|exec|udp PORT|PATH N");
        return ExitCode::from(2);
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
    let mut out = serde_json::json!({
        "op": op,
        "iterations": iterations,
        "elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        "errors": errors,
    });
    if let Some(e) = first_errno {
        out["first_errno"] = e.into();
    }
    println!("{out}");
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
