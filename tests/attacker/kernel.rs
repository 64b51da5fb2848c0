//! Techniques of the `kernel` family (see the crate documentation): a root agent switching oxd
//! off through its processes, changing the kernel, or reaching raw devices and raw sockets.
//! Run them as root: each needs a capability an ordinary user does not have.
//!
//! - `oxd-task PID`: acts on oxd's process PID (`oxd run`): `kill(SIGKILL)` (step `kill-9`),
//!   `kill(SIGSTOP)` (`kill-stop`; a `SIGCONT` follows at once if it got through),
//!   `pidfd_open` + `pidfd_send_signal(SIGKILL)` (`pidfd-open`, `pidfd-kill`),
//!   `tgkill(SIGTERM)` (`tgkill`), `PTRACE_ATTACH` and `PTRACE_SEIZE` (`ptrace-attach`,
//!   `ptrace-seize`), `process_vm_readv` (`process-vm-readv`), `setpriority(19)`
//!   (`setpriority`), `ioprio_set` idle (`ioprio-set`), `sched_setscheduler(SCHED_IDLE)`
//!   (`sched-setscheduler`), `sched_setaffinity` (`sched-setaffinity`), and last `kill(0)`
//!   (`alive`: it is still there).
//! - `kernel FILE DIR`: `finit_module` of the regular file FILE (`finit-module`),
//!   `init_module` of a small buffer (`init-module`), `delete_module("oxd_no_such_module")`
//!   (`delete-module`), `kexec_file_load` of FILE (`kexec-file-load`),
//!   `reboot(LINUX_REBOOT_CMD_CAD_OFF)` (`reboot-cad-off`; harmless were it allowed), opens of
//!   `/dev/mem`, `/dev/port` and `/proc/kcore` (`open-dev-mem`, `open-dev-port`,
//!   `open-kcore`), `iopl(3)` (`iopl`), `mknod` of the block device 7:0 as `DIR/blk`
//!   (`mknod-blk`), `SO_RCVBUFFORCE` (`rcvbufforce`), `RTM_NEWADDR` of 10.213.9.9/32 on `lo`
//!   by a raw netlink message (`netlink-newaddr`), `clock_settime` to the current time
//!   (`clock-settime`), and `socket(AF_APPLETALK)`, whose module the kernel would autoload
//!   (`module-autoload`).
//! - `ima-policy FILE`: writes FILE's path into `/sys/kernel/security/ima/policy`, which makes
//!   the kernel read FILE as an IMA policy (step `ima-policy`; `{"skipped":"..."}` when the
//!   kernel has no such file).
//! - `device-open PATH`: opens the device node PATH for writing (`open-write`), then for
//!   reading (`open-read`).
//! - `raw-sockets`: `socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)` (`packet`), then, if made, sends
//!   an Ethernet frame on `lo` (`packet-send`); `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`
//!   (`raw4`) and `socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)` (`raw6`).

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "system call arguments and results, and the fixed sizes and constants of the \
              kernel's structs, converted to the C types the calls take"
)]

use std::{
    ffi::CString,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::{check, step, Outcome};

/// Runs `technique` if it belongs to this family.
pub(crate) fn run(technique: &str, args: &[String]) -> Option<Outcome> {
    let outcome = match (technique, args) {
        ("oxd-task", [pid]) => match pid.parse() {
            Ok(pid) => oxd_task(pid),
            Err(_) => Outcome::Usage(format!("bad pid {pid:?}")),
        },
        ("kernel", [file, dir]) => kernel(file, dir),
        ("ima-policy", [file]) => ima_policy(file),
        ("device-open", [path]) => device_open(path),
        ("raw-sockets", []) => raw_sockets(),
        ("oxd-task" | "kernel" | "ima-policy" | "device-open" | "raw-sockets", _) => {
            Outcome::Usage("wrong arguments (see tests/attacker/kernel.rs)".into())
        }
        _ => return None,
    };
    Some(outcome)
}

fn c_string(s: &str) -> CString {
    CString::new(s).expect("no NUL in the argument")
}

/// `Err(last OS error)` when a libc call returned a negative value.
fn check_int(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    check(ret.into()).map(|r| r as libc::c_int)
}

fn oxd_task(pid: libc::pid_t) -> Outcome {
    // SAFETY: plain system calls; every pointer passed points at a live local.
    unsafe {
        step("kill-9", &check(libc::kill(pid, libc::SIGKILL).into()));
        let stop = check(libc::kill(pid, libc::SIGSTOP).into());
        if stop.is_ok() {
            libc::kill(pid, libc::SIGCONT);
        }
        step("kill-stop", &stop);
        let pidfd = check(libc::syscall(libc::SYS_pidfd_open, pid, 0));
        step("pidfd-open", &pidfd);
        if let Ok(fd) = pidfd {
            let fd = OwnedFd::from_raw_fd(fd as i32);
            let sent = libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            step("pidfd-kill", &check(sent));
        }
        step(
            "tgkill",
            &check(libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGTERM)),
        );
        step(
            "ptrace-attach",
            &check(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0)),
        );
        step(
            "ptrace-seize",
            &check(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0)),
        );
        let mut byte = [0u8; 1];
        let local = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // Any address: without oxd the call reads it or fails with EFAULT, not EPERM.
        let remote = libc::iovec {
            iov_base: 0x1000 as *mut libc::c_void,
            iov_len: 1,
        };
        step(
            "process-vm-readv",
            &check(libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) as _),
        );
        step(
            "setpriority",
            &check_int(libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 19)),
        );
        // IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE << 13.
        step(
            "ioprio-set",
            &check(libc::syscall(libc::SYS_ioprio_set, 1, pid, 3 << 13)),
        );
        let param = libc::sched_param { sched_priority: 0 };
        step(
            "sched-setscheduler",
            &check_int(libc::sched_setscheduler(
                pid,
                libc::SCHED_IDLE,
                &raw const param,
            )),
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        step(
            "sched-setaffinity",
            &check_int(libc::sched_setaffinity(
                pid,
                size_of::<libc::cpu_set_t>(),
                &raw const set,
            )),
        );
        step("alive", &check(libc::kill(pid, 0).into()));
    }
    Outcome::Done
}

fn kernel(file: &str, dir: &str) -> Outcome {
    let Ok(image) = std::fs::File::open(file) else {
        return Outcome::Setup(format!("cannot open {file}"));
    };
    let fd = image.as_raw_fd();
    let empty = c_string("");
    // SAFETY: plain system calls; every pointer passed points at a live local.
    unsafe {
        step(
            "finit-module",
            &check(libc::syscall(libc::SYS_finit_module, fd, empty.as_ptr(), 0)),
        );
        let buf = [0u8; 64];
        step(
            "init-module",
            &check(libc::syscall(
                libc::SYS_init_module,
                buf.as_ptr(),
                buf.len(),
                empty.as_ptr(),
            )),
        );
        let name = c_string("oxd_no_such_module");
        step(
            "delete-module",
            &check(libc::syscall(
                libc::SYS_delete_module,
                name.as_ptr(),
                libc::O_NONBLOCK,
            )),
        );
        // KEXEC_FILE_NO_INITRAMFS.
        step(
            "kexec-file-load",
            &check(libc::syscall(
                libc::SYS_kexec_file_load,
                fd,
                -1,
                0,
                std::ptr::null::<libc::c_char>(),
                4,
            )),
        );
        step(
            "reboot-cad-off",
            &check_int(libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF)),
        );
        for (name, path) in [
            ("open-dev-mem", "/dev/mem"),
            ("open-dev-port", "/dev/port"),
            ("open-kcore", "/proc/kcore"),
        ] {
            step(name, &std::fs::File::open(path));
        }
        step("iopl", &check(libc::syscall(libc::SYS_iopl, 3)));
        let node = c_string(&format!("{dir}/blk"));
        step(
            "mknod-blk",
            &check_int(libc::mknod(
                node.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(7, 0),
            )),
        );
        let udp = check_int(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0));
        if let Ok(fd) = udp {
            let fd = OwnedFd::from_raw_fd(fd);
            let size: libc::c_int = 64 << 20;
            step(
                "rcvbufforce",
                &check_int(libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )),
            );
        } else {
            step("rcvbufforce", &udp);
        }
        step("netlink-newaddr", &netlink_newaddr());
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now);
        step(
            "clock-settime",
            &check_int(libc::clock_settime(libc::CLOCK_REALTIME, &raw const now)),
        );
        let atalk = check_int(libc::socket(libc::AF_APPLETALK, libc::SOCK_DGRAM, 0));
        if let Ok(fd) = atalk {
            drop(OwnedFd::from_raw_fd(fd));
        }
        step("module-autoload", &atalk);
    }
    Outcome::Done
}

/// `RTM_NEWADDR` of 10.213.9.9/32 on `lo` (interface 1) over a raw netlink socket; the error
/// is the kernel's acknowledgement.
fn netlink_newaddr() -> std::io::Result<()> {
    // SAFETY: plain system calls on a socket of our own, with buffers we own.
    unsafe {
        let fd = check_int(libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        ))?;
        let fd = OwnedFd::from_raw_fd(fd);
        // nlmsghdr (16) + ifaddrmsg (8) + rtattr IFA_LOCAL (4 + 4) + rtattr IFA_ADDRESS (4 + 4).
        let mut msg = [0u8; 40];
        msg[0..4].copy_from_slice(&40u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
        let flags =
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        msg[16] = libc::AF_INET as u8;
        msg[17] = 32;
        msg[20..24].copy_from_slice(&1u32.to_ne_bytes());
        for (at, kind) in [(24, libc::IFA_LOCAL), (32, libc::IFA_ADDRESS)] {
            msg[at..at + 2].copy_from_slice(&8u16.to_ne_bytes());
            msg[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            msg[at + 4..at + 8].copy_from_slice(&[10, 213, 9, 9]);
        }
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        check(libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) as _)?;
        let mut reply = [0u8; 256];
        let n = check(libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) as _)?;
        // nlmsghdr, then for NLMSG_ERROR the (negated) errno.
        let kind = u16::from_ne_bytes([reply[4], reply[5]]);
        if n < 20 || kind != libc::NLMSG_ERROR as u16 {
            return Err(std::io::Error::other("no netlink acknowledgement"));
        }
        let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if errno == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(-errno))
        }
    }
}

fn ima_policy(file: &str) -> Outcome {
    let policy = "/sys/kernel/security/ima/policy";
    if !std::path::Path::new(policy).exists() {
        println!("{}", serde_json::json!({ "skipped": "no IMA policy file" }));
        return Outcome::Done;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(policy)
        .and_then(|mut f| f.write_all(format!("{file}\n").as_bytes()));
    step("ima-policy", &written);
    Outcome::Done
}

fn device_open(path: &str) -> Outcome {
    step(
        "open-write",
        &std::fs::OpenOptions::new().write(true).open(path),
    );
    step("open-read", &std::fs::File::open(path));
    Outcome::Done
}

fn raw_sockets() -> Outcome {
    // SAFETY: plain system calls; every pointer passed points at a live local.
    unsafe {
        let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
        let packet = check_int(libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            libc::c_int::from(eth_p_all),
        ));
        step("packet", &packet);
        if let Ok(fd) = packet {
            let fd = OwnedFd::from_raw_fd(fd);
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = 1;
            to.sll_protocol = eth_p_all;
            // An Ethernet header (to and from 00:00:00:00:00:00, type 0x88b5, local
            // experimental) and a payload.
            let mut frame = [0u8; 60];
            frame[12] = 0x88;
            frame[13] = 0xb5;
            frame[14..27].copy_from_slice(b"oxd-raw-frame");
            step(
                "packet-send",
                &check(libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                ) as _),
            );
        }
        for (name, family, protocol) in [
            ("raw4", libc::AF_INET, libc::IPPROTO_ICMP),
            ("raw6", libc::AF_INET6, libc::IPPROTO_ICMPV6),
        ] {
            let raw = check_int(libc::socket(family, libc::SOCK_RAW, protocol));
            if let Ok(fd) = raw {
                drop(OwnedFd::from_raw_fd(fd));
            }
            step(name, &raw);
        }
    }
    Outcome::Done
}
