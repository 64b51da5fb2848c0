//! Audit records: one JSON object per line for every decision the kernel reports.
//!
//! Schema (every record):
//! - `time`: RFC 3339 UTC timestamp of the decision, nanoseconds;
//! - `policy`, `policy_sha256`, `generation`: the policy that decided: its name, the SHA-256
//!   of its text, and the generation it was loaded as (`oxd run`: 1; the daemon numbers every
//!   policy it loads or replaces, increasing);
//! - `op`: `exec`, `open`, `mmap-exec` and `mprotect-exec` (mapping a file executable, or
//!   making a file mapping executable; recorded when denied, and in audit mode when allowed),
//!   `connect` or `sendmsg` (a UDP send with a destination), `socket` (creating an ICMP ping,
//!   raw or other non-TCP/UDP inet socket); the changes to the file system `create`,
//!   `truncate`, `unlink`, `rmdir`, `mkdir`, `mknod`, `symlink`, `rename-from`, `rename-to`,
//!   `link-from`, `link-to`, `chmod`, `chown` (one record per end of a rename or link);
//! - `op` (namespaces, `[process] namespaces`): `userns-create`, `mount`, `umount`,
//!   `move-mount`, `pivot-root`, `chroot`, `capable` (a capability in another user namespace,
//!   or `CAP_SYS_CHROOT`: how `setns` is checked; recorded when denied);
//! - `op` (ipc): `ptrace`, `signal`, `tty-inject`, `unix-connect`, `unix-send`,
//!   `signal-owner`;
//! - `op` (guard, denied under every policy and mode): `bpf` (any `bpf()` command; target the
//!   command, `detail` its number), `cgroup-write` (a write to a cgroup outside the agent's
//!   confinement, or a move across its border; target `cgroup N`, `detail` the low 32 bits
//!   of the cgroup's id, 0 when unknown or cgroup v1), `kernel-fs-write` (a write to a kernel
//!   interface file system; target its name, `proc pid N` for an entry of oxd's process N,
//!   `detail` its magic number);
//! - `detail` (`mount`, `umount`: the flags; `capable`: the capability number);
//! - `target`: the resolved path of the executed, opened or changed file, or `ip:port`
//!   (`[ipv6]:port`), or for `socket` the family, type and IP protocol (`ipv4 dgram proto 1`);
//! - `access` (open and file-system changes): `read`, `write` or `read,write` (the source of
//!   a rename or link is judged for both);
//! - `protocol` (connect, sendmsg and socket only): `tcp`, `udp`, `icmp`, `raw` or `other`;
//! - `decision`: `allow` or `deny`; `enforced`: false when the policy is in audit mode (a
//!   `deny` that was recorded but not enforced);
//! - `rule`: the rule that decided (`exec.allow[0]`, ...) or `default`; `rule_text`: the rule as
//!   written; `reason`: `rule`, `default`, or why the kernel failed closed;
//! - `pid`, `tid`, `uid`, `gid`, `comm`, `cgroup_id`: who acted.
//! - `target_bytes`, `comm_bytes`: the exact bytes (hex) of a path, Unix socket name or
//!   command name the agent chose, present only when `target` or `comm` cannot show them
//!   exactly: bytes that are not UTF-8 (shown there as U+FFFD), or NUL bytes inside an
//!   abstract socket name (shown there as `@`). The kernel hands over bytes, not text; these
//!   fields keep the log exact without changing `target` for the usual, valid names.
//! - ipc ops: `ptrace` (target `pid N`; `detail`: the `PTRACE_MODE_*` bits of the access
//!   check, 0 for `PTRACE_TRACEME`), `signal` (target `pid N`; `detail`: the signal number),
//!   `tty-inject` (target `TIOCSTI` or `TIOCLINUX`; `detail`: the ioctl command),
//!   `unix-connect` and `unix-send` (target: the socket's path (for a socket outside the
//!   confinement, its bound path resolved in the host's view), `@name` for an abstract name,
//!   `<unnamed>` for none; `rule`: the `[ipc]` socket rule that decided, or `default`),
//!   `signal-owner` (choosing who gets a file's I/O signals; target: the command and what it
//!   names, `F_SETOWN pid N`, `F_SETOWN pgrp N`, `F_SETOWN none`, `F_SETSIG N`,
//!   `F_SETFL O_ASYNC`, `F_SETOWN_EX`, `FIOSETOWN`, `SIOCSPGRP`, `FIOASYNC`; `detail`: the
//!   command); `peer_pid`: the other task (the listening process for a Unix socket, when the
//!   kernel knows it; the process `F_SETOWN` names).
//! - guard ops about oxd's processes and the kernel (denied under every policy and mode, reason
//!   `guard`): `signal` and `ptrace` of one of oxd's processes; `sched` (target `pid N`;
//!   `detail`: 1 `setpriority`, 2 `ioprio_set`, 3 `sched_setscheduler` and the like, 4
//!   `migrate_pages`/`move_pages`); `kernel-load` (target `module`, `kexec-image`,
//!   `kexec-initramfs`, `policy`, `x509-certificate` or `unknown`; `detail`: the kernel's id);
//!   `module-request` (target: the module name asked for); `capability` (target: the
//!   capability's name, `CAP_SYS_MODULE`, ...; `detail`: its number); `device-write` (target
//!   `block MAJOR:MINOR`; `detail`: the device number); `socket` also for `AF_PACKET`
//!   (`packet raw proto 768`).
//!
//! A record with `"op": "lost"` reports decisions that were made but could not be recorded
//! because the ring buffer was full (`count`, since the previous such record), with the
//! kernel's totals when it was written: `lost_total` decisions lost and `submitted` put into
//! the ring buffer. A record with `"op": "counts"` closes each pump's part of the log (the end
//! of `oxd run`, a daemon's stop) with the same two totals, read after the last drain, and
//! `complete`: true when they account for every decision (`oxd run`); see [`crate::pump`] for
//! what they prove. `oxd audit verify` checks a complete `counts` record against the records
//! before it.
//!
//! A record with `"op": "tally"` stands for `count` decisions the kernel counted instead of
//! recording each, since the previous tally of the same kind: `of` (the operation), `decision`,
//! `enforced`, `rule`, `policy` and `generation` as a decision record has them (no target), and
//! `why`: `counted` (allowed decisions under `--record counted`) or `rate-limited` (over
//! `--record-rate`). A `counts` record then also carries the kernel's totals `tallied` and
//! `suppressed`, which `oxd audit verify` checks against the tallies of a complete run.
//!
//! A record with `"op": "kill-switch"` is the daemon's: the kill switch set on a target
//! (`action`: `deny-all`, `freeze` or `kill`) or lifted (`resume`), with the target's `cgroup`
//! and `cgroup_id`, the `policy`, `policy_sha256` and `generation` it is confined under, and
//! `outcome` (what was done: frozen, killed, thawed, or what failed). It is not a decision.
//!
//! A record with `"op": "limit"` counts forks and clones that a policy's
//! `[process] max_processes` refused (the kernel's pids controller enforces it on the
//! target's cgroup, `EAGAIN` to the caller): `of` (`fork`), `decision` (`deny`), `rule`
//! (`process.max_processes`), `max`, the target's `cgroup` and `cgroup_id`, `policy`,
//! `policy_sha256`, `generation`, and `count` since the previous such record of the target
//! (the daemon writes them twice a second, `oxd run` at the end). Not a decision record
//! either: `oxd audit verify` does not count it.
//!
//! Every record starts with `seq` (0, 1, 2, ... along the log) and `prev`, the SHA-256 (hex) of
//! the previous record's line (64 zeros for the first): `oxd audit verify` checks the chain.

pub mod read;

use std::{
    io::{Read, Seek, SeekFrom, Write},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::time::{clock_gettime, ClockId};
use oxd_common::{
    access, action, mode, op, proto, reason, Event, EVENT_HEADER_LEN, PATH_BUF_LEN, RULE_DEFAULT,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::policy::Policy;

/// Converts `bpf_ktime_get_boot_ns` timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at boot.
    boot: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let boot_elapsed = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .ok()
            .and_then(|t| {
                Some(Duration::new(
                    u64::try_from(t.tv_sec()).ok()?,
                    u32::try_from(t.tv_nsec()).ok()?,
                ))
            })
            .unwrap_or_default();
        Self {
            boot: SystemTime::now() - boot_elapsed,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(boot_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One audit record.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub policy: String,
    pub policy_sha256: String,
    #[serde(default)]
    pub generation: u64,
    pub op: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub access: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protocol: Option<String>,
    /// Op-specific number: the mount flags (`mount`, `umount`), the capability number
    /// (`capable`), the `PTRACE_MODE_*` bits (`ptrace`), the signal (`signal`), the ioctl
    /// command (`tty-inject`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<u32>,
    pub decision: String,
    pub enforced: bool,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
    pub reason: String,
    /// The number of the grant that decided (`oxd ctl grant`), for a rule that requires one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grant: Option<u32>,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer_pid: Option<u32>,
    /// The exact bytes of the path or socket name behind `target`, hex, when `target` cannot
    /// show them (not UTF-8, or an abstract socket name with NUL bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_bytes: Option<String>,
    /// The exact bytes of `comm`, hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comm_bytes: Option<String>,
}

/// The decision in one ring buffer record: [`EVENT_HEADER_LEN`] bytes of header, then exactly
/// the `path_len` bytes of path it announces. Any other length is an error.
///
/// # Errors
///
/// [`DecodeError`] for a record of any other length.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < EVENT_HEADER_LEN {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    // SAFETY: `Event` is plain data (#[repr(C)], integers and byte arrays only): all zeroes is
    // a valid value, and so is any header the kernel wrote (same definition).
    let mut event: Event = unsafe { std::mem::zeroed() };
    // SAFETY: the header is the first EVENT_HEADER_LEN bytes of `Event`, `bytes` has that many;
    // a byte copy assumes no alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&raw mut event).cast::<u8>(),
            EVENT_HEADER_LEN,
        );
    }
    let path_len = event.path_len as usize;
    if path_len > PATH_BUF_LEN || bytes.len() != EVENT_HEADER_LEN + path_len {
        return Err(DecodeError::Inconsistent {
            len: bytes.len(),
            path_len: event.path_len,
        });
    }
    event.path[..path_len].copy_from_slice(&bytes[EVENT_HEADER_LEN..]);
    Ok(event)
}

/// A ring buffer record that is not a decision as the kernel side writes one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring buffer record of {len} bytes is shorter than a decision's header ({EVENT_HEADER_LEN} bytes)")]
    Short { len: usize },
    #[error(
        "ring buffer record of {len} bytes does not hold a decision's header ({EVENT_HEADER_LEN} \
         bytes) and the {path_len} path bytes it announces (at most {PATH_BUF_LEN})"
    )]
    Inconsistent { len: usize, path_len: u32 },
}

/// `bytes` up to the first NUL.
fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// `bytes` up to the first NUL as text, each byte that is not UTF-8 as U+FFFD (the exact bytes
/// go to [`exact_bytes`]).
fn c_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(until_nul(bytes)).into_owned()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The bytes of `hex` (as [`hex`] writes them); `None` if it is not hex.
pub fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `bytes` as hex when the text made of them cannot show them exactly: not UTF-8.
fn exact_bytes(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).is_err().then(|| hex(bytes))
}

/// The record's `target_bytes`: the exact path or socket name behind `target`, when `target`
/// cannot show it.
fn target_bytes(event: &Event) -> Option<String> {
    let raw = &event.path[..(event.path_len as usize).min(PATH_BUF_LEN)];
    match event.op {
        op::UNIX_CONNECT | op::UNIX_SEND => match raw {
            [0, name @ ..] if name.contains(&0) => Some(hex(raw)),
            _ => exact_bytes(raw),
        },
        op::EXEC
        | op::OPEN
        | op::MMAP_EXEC
        | op::MPROTECT_EXEC
        | op::MOUNT
        | op::MODULE_REQUEST => exact_bytes(until_nul(raw)),
        other if change_op_name(other).is_some() => exact_bytes(until_nul(raw)),
        _ => None,
    }
}

/// The target of a `socket` record: family, type and IP protocol number, from the event's
/// `detail` (`family << 24 | type << 16 | protocol`), e.g. `ipv4 dgram proto 1` (a ping socket).
fn socket_target(detail: u32) -> String {
    let family = match detail >> 24 {
        2 => "ipv4".to_owned(),
        10 => "ipv6".to_owned(),
        17 => "packet".to_owned(),
        n => format!("family {n}"),
    };
    let sock_type = match (detail >> 16) & 0xff {
        1 => "stream".to_owned(),
        2 => "dgram".to_owned(),
        3 => "raw".to_owned(),
        5 => "seqpacket".to_owned(),
        n => format!("type {n}"),
    };
    format!("{family} {sock_type} proto {}", detail & 0xffff)
}

impl Record {
    /// The record of `event`, decided by `policy` (`None`: a generation this process does not
    /// know, named as such).
    pub fn from_event(event: &Event, policy: Option<&Policy>, clock: &Clock) -> Self {
        let ip = Ipv6Addr::from(event.addr);
        let path = || {
            let len = (event.path_len as usize).min(PATH_BUF_LEN);
            if len == 0 {
                "<unresolved>".to_owned()
            } else {
                c_string(&event.path[..len])
            }
        };
        let socket = |v4_socket: bool| {
            let addr = match ip.to_ipv4_mapped() {
                Some(v4) if v4_socket => SocketAddr::new(v4.into(), event.port),
                _ => SocketAddr::V6(SocketAddrV6::new(ip, event.port, 0, 0)),
            };
            addr.to_string()
        };
        let (op_name, target) = match event.op {
            op::EXEC => ("exec", path()),
            op::OPEN => ("open", path()),
            op::MMAP_EXEC => ("mmap-exec", path()),
            op::MPROTECT_EXEC => ("mprotect-exec", path()),
            op::CONNECT4 => ("connect", socket(true)),
            op::CONNECT6 => ("connect", socket(false)),
            op::SENDMSG4 => ("sendmsg", socket(true)),
            op::SENDMSG6 => ("sendmsg", socket(false)),
            op::SOCKET => ("socket", socket_target(event.detail)),
            op::MOUNT => ("mount", path()),
            other => match (namespace_op(other), change_op_name(other)) {
                (Some(name), _) => (name, String::new()),
                (None, Some(name)) => (name, path()),
                (None, None) => ipc_target(event)
                    .or_else(|| guard_kernel_target(event))
                    .or_else(|| guard_fs_target(event))
                    .unwrap_or(("unknown", String::new())),
            },
        };
        let detail = matches!(
            event.op,
            op::MOUNT
                | op::UMOUNT
                | op::CAPABLE
                | op::PTRACE
                | op::SIGNAL
                | op::TTY_INJECT
                | op::SIGNAL_OWNER
                | op::KERNEL_LOAD
                | op::CAPABILITY
                | op::DEVICE_WRITE
                | op::SCHED
                | op::BPF
                | op::CGROUP_WRITE
                | op::KERNEL_FS_WRITE
        )
        .then_some(event.detail);
        let protocol = protocol_of(event);
        let access = access_of(event);
        let (rule, rule_text) = if event.rule_id == RULE_DEFAULT {
            ("default".to_owned(), None)
        } else {
            match policy.and_then(|p| p.rule(event.rule_id)) {
                Some(info) => (info.id.clone(), Some(info.text.clone())),
                None => (format!("#{}", event.rule_id), None),
            }
        };
        let reason = reason_text(event.reason);
        Self {
            time: humantime::format_rfc3339_nanos(clock.wall(event.boot_ns)).to_string(),
            policy: policy.map_or_else(|| "<unknown>".to_owned(), |p| p.name.clone()),
            policy_sha256: policy.map(|p| p.sha256.clone()).unwrap_or_default(),
            generation: event.generation,
            op: op_name.to_owned(),
            target,
            access,
            protocol,
            detail,
            decision: if event.decision == action::ALLOW {
                "allow"
            } else {
                "deny"
            }
            .to_owned(),
            enforced: event.mode != mode::AUDIT,
            rule,
            rule_text,
            reason: reason.to_owned(),
            grant: grant_of(event),
            pid: event.pid,
            tid: event.tid,
            uid: event.uid,
            gid: event.gid,
            comm: c_string(&event.comm),
            cgroup_id: event.cgroup_id,
            peer_pid: peer_of(event),
            target_bytes: target_bytes(event),
            comm_bytes: exact_bytes(until_nul(&event.comm)),
        }
    }
}

impl Record {
    /// Whether this is a request for approval: an action a rule requiring a grant denied for
    /// want of one (what `oxd approve` asks about, and a grant can answer).
    pub fn is_approval_request(&self) -> bool {
        self.decision == "deny"
            && self.reason == reason_text(reason::GRANT_REQUIRED)
            && matches!(self.op.as_str(), "connect" | "sendmsg")
    }
}

/// The record's `grant`: the grant that decided a network action.
fn grant_of(event: &Event) -> Option<u32> {
    let network = matches!(
        event.op,
        op::CONNECT4 | op::CONNECT6 | op::SENDMSG4 | op::SENDMSG6
    );
    let by_grant = matches!(
        event.reason,
        reason::GRANTED | reason::GRANT_USED | reason::GRANT_EXPIRED
    );
    (network && by_grant).then_some(event.detail)
}

/// The record's `protocol`: for network ops only.
fn protocol_of(event: &Event) -> Option<String> {
    let is_network = matches!(
        event.op,
        op::CONNECT4 | op::CONNECT6 | op::SENDMSG4 | op::SENDMSG6 | op::SOCKET
    );
    is_network.then(|| {
        match event.proto {
            proto::TCP => "tcp",
            proto::UDP => "udp",
            proto::ICMP => "icmp",
            proto::RAW => "raw",
            _ => "other",
        }
        .to_owned()
    })
}

/// The record's `access`: for opens and file-system changes only.
fn access_of(event: &Event) -> Option<String> {
    (event.op == op::OPEN || change_op_name(event.op).is_some()).then(|| {
        match (
            event.access & access::READ != 0,
            event.access & access::WRITE != 0,
        ) {
            (true, true) => "read,write",
            (false, true) => "write",
            _ => "read",
        }
        .to_owned()
    })
}

/// The record's `reason` for a kernel [`reason`] code.
fn reason_text(reason: u32) -> &'static str {
    match reason {
        reason::RULE => "rule",
        reason::DEFAULT => "default",
        reason::PATH_TOO_LONG => "path too long for the kernel's rule keys (fail closed)",
        reason::PATH_UNRESOLVED => "path could not be resolved (fail closed)",
        reason::NO_CONFIG => "policy configuration missing (fail closed)",
        reason::EMPTY_SLOT => "policy slot empty (fail closed)",
        reason::HALTED => "halted by the kill switch (until `oxd ctl resume`)",
        reason::BUDGET => "the rule's budget is spent for this window (denied until it refills)",
        reason::CONNECTIONS => {
            "the rule's connection limit is reached (denied until a socket on it is closed)"
        }
        reason::GRANTED => "granted: one use of the grant taken",
        reason::GRANT_REQUIRED => "the rule requires a grant, and none was given for this action",
        reason::GRANT_USED => "the grant for this action is used up (a repeat is denied)",
        reason::GRANT_EXPIRED => "the grant for this action has expired",
        reason::MAPPING_UNDECIDED => "mapping not decided when it was made (fail closed)",
        reason::FOREIGN_MOUNT_NS => "the file is in another mount namespace (namespaces denied)",
        reason::NO_PATH_IN_NS => {
            "no path to the file in the agent's mount namespace could be judged (fail closed)"
        }
        reason::IPC_OUTSIDE => "outside the agent's confinement",
        reason::IPC_INSIDE => "inside the agent's confinement",
        reason::IPC_PEER_UNKNOWN => "the other party's cgroup could not be read (fail closed)",
        reason::TTY_INJECT => "terminal input injection is never allowed",
        reason::SIGNAL_OWNER => {
            "a file's I/O signals may go only to the agent's own process, with the default signal"
        }
        reason::GUARD => {
            "guard: it could switch oxd off, leave the confinement or change the kernel; denied \
             under every policy and mode"
        }
        _ => "unknown",
    }
}

/// The `op` of a namespace operation recorded without a path (`[process] namespaces`).
fn namespace_op(event_op: u32) -> Option<&'static str> {
    Some(match event_op {
        op::USERNS_CREATE => "userns-create",
        op::UMOUNT => "umount",
        op::MOVE_MOUNT => "move-mount",
        op::PIVOT_ROOT => "pivot-root",
        op::CHROOT => "chroot",
        op::CAPABLE => "capable",
        _ => return None,
    })
}

/// The target of a `protected-write` event: what was attempted on one of oxd's own files (the
/// `detail` numbers of `oxd-ebpf/src/guard_files.rs`).
fn protected_write_target(detail: u32) -> String {
    let attempt = match detail {
        1 => "open for writing",
        2 => "unlink",
        3 => "rmdir",
        4 => "rename",
        5 => "truncate",
        6 => "chmod",
        7 => "chown",
        8 => "create in",
        9 => "link into",
        10 => "extended attribute",
        _ => "change",
    };
    format!("oxd's own file: {attempt}")
}

/// The `op` name of a change to the file system (`oxd_common::op::CREATE` to `UTIMES`).
fn change_op_name(op: u32) -> Option<&'static str> {
    Some(match op {
        op::CREATE => "create",
        op::TRUNCATE => "truncate",
        op::UNLINK => "unlink",
        op::RMDIR => "rmdir",
        op::MKDIR => "mkdir",
        op::MKNOD => "mknod",
        op::SYMLINK => "symlink",
        op::RENAME_FROM => "rename-from",
        op::RENAME_TO => "rename-to",
        op::LINK_FROM => "link-from",
        op::LINK_TO => "link-to",
        op::CHMOD => "chmod",
        op::CHOWN => "chown",
        op::SETXATTR => "setxattr",
        op::REMOVEXATTR => "removexattr",
        op::UTIMES => "utimes",
        _ => return None,
    })
}

/// The op name and target of an ipc event; `None` for other ops.
fn ipc_target(event: &Event) -> Option<(&'static str, String)> {
    Some(match event.op {
        op::PTRACE => ("ptrace", format!("pid {}", event.peer_pid)),
        op::SIGNAL => ("signal", format!("pid {}", event.peer_pid)),
        op::TTY_INJECT => (
            "tty-inject",
            if event.detail == 0x541C {
                "TIOCLINUX"
            } else {
                "TIOCSTI"
            }
            .to_owned(),
        ),
        op::UNIX_CONNECT => ("unix-connect", unix_path(event)),
        op::UNIX_SEND => ("unix-send", unix_path(event)),
        op::SIGNAL_OWNER => ("signal-owner", signal_owner_target(event)),
        op::PROTECTED_WRITE => ("protected-write", protected_write_target(event.detail)),
        _ => return None,
    })
}

/// The op name and target of a guard event about oxd's processes, the kernel, block devices
/// (`oxd-ebpf/src/guard_kernel.rs`); `None` for other ops.
fn guard_kernel_target(event: &Event) -> Option<(&'static str, String)> {
    Some(match event.op {
        op::KERNEL_LOAD => (
            "kernel-load",
            match event.detail {
                1 => "firmware",
                2 => "module",
                3 => "kexec-image",
                4 => "kexec-initramfs",
                5 => "policy",
                6 => "x509-certificate",
                _ => "unknown",
            }
            .to_owned(),
        ),
        op::MODULE_REQUEST => {
            let len = (event.path_len as usize).min(PATH_BUF_LEN);
            ("module-request", c_string(&event.path[..len]))
        }
        op::CAPABILITY => ("capability", capability_name(event.detail)),
        op::DEVICE_WRITE => (
            "device-write",
            format!("block {}:{}", event.detail >> 20, event.detail & 0xf_ffff),
        ),
        op::SCHED => ("sched", format!("pid {}", event.peer_pid)),
        _ => return None,
    })
}

/// The op name and target of a guard event on `bpf()`, cgroups or kernel file systems
/// (`bpf`: the command, `BPF_PROG_LOAD` or `command N`; `cgroup-write`: `cgroup N` with the
/// low 32 bits of its id, `cgroup` when unknown or v1; `kernel-fs-write`: the file system);
/// `None` for other ops.
fn guard_fs_target(event: &Event) -> Option<(&'static str, String)> {
    Some(match event.op {
        op::BPF => ("bpf", bpf_command(event.detail)),
        op::CGROUP_WRITE => (
            "cgroup-write",
            if event.detail == 0 {
                "cgroup".to_owned()
            } else {
                format!("cgroup {}", event.detail)
            },
        ),
        op::KERNEL_FS_WRITE => ("kernel-fs-write", kernel_fs_name(event)),
        _ => return None,
    })
}

/// The name of a capability the guard refuses (`CAP_SYS_MODULE`), `cap N` for another.
fn capability_name(cap: u32) -> String {
    match cap {
        12 => "CAP_NET_ADMIN",
        16 => "CAP_SYS_MODULE",
        17 => "CAP_SYS_RAWIO",
        22 => "CAP_SYS_BOOT",
        25 => "CAP_SYS_TIME",
        27 => "CAP_MKNOD",
        30 => "CAP_AUDIT_CONTROL",
        32 => "CAP_MAC_OVERRIDE",
        33 => "CAP_MAC_ADMIN",
        38 => "CAP_PERFMON",
        39 => "CAP_BPF",
        n => return format!("cap {n}"),
    }
    .to_owned()
}

/// The name of a `bpf()` command.
fn bpf_command(cmd: u32) -> String {
    const NAMES: [&str; 37] = [
        "BPF_MAP_CREATE",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_UPDATE_ELEM",
        "BPF_MAP_DELETE_ELEM",
        "BPF_MAP_GET_NEXT_KEY",
        "BPF_PROG_LOAD",
        "BPF_OBJ_PIN",
        "BPF_OBJ_GET",
        "BPF_PROG_ATTACH",
        "BPF_PROG_DETACH",
        "BPF_PROG_TEST_RUN",
        "BPF_PROG_GET_NEXT_ID",
        "BPF_MAP_GET_NEXT_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_RAW_TRACEPOINT_OPEN",
        "BPF_BTF_LOAD",
        "BPF_BTF_GET_FD_BY_ID",
        "BPF_TASK_FD_QUERY",
        "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        "BPF_MAP_FREEZE",
        "BPF_BTF_GET_NEXT_ID",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        "BPF_MAP_UPDATE_BATCH",
        "BPF_MAP_DELETE_BATCH",
        "BPF_LINK_CREATE",
        "BPF_LINK_UPDATE",
        "BPF_LINK_GET_FD_BY_ID",
        "BPF_LINK_GET_NEXT_ID",
        "BPF_ENABLE_STATS",
        "BPF_ITER_CREATE",
        "BPF_LINK_DETACH",
        "BPF_PROG_BIND_MAP",
        "BPF_TOKEN_CREATE",
    ];
    NAMES
        .get(cmd as usize)
        .map_or_else(|| format!("command {cmd}"), |name| (*name).to_owned())
}

/// The kernel file system of a `kernel-fs-write` event, by its magic number.
fn kernel_fs_name(event: &Event) -> String {
    let name = match event.detail {
        0x9fa0 if event.peer_pid != 0 => return format!("proc pid {}", event.peer_pid),
        0x9fa0 => "proc",
        0xcafe_4a11 => "bpf",
        0x6265_6572 => "sysfs",
        0x7363_6673 => "securityfs",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x6265_6570 => "configfs",
        0x4249_4e4d => "binfmt_misc",
        0x6165_676c => "pstore",
        0xde5e_81e4 => "efivarfs",
        other => return format!("magic {other:#x}"),
    };
    name.to_owned()
}

/// The target of a `signal-owner` event: the command, and what it names (`F_SETOWN pid 42`,
/// `F_SETOWN pgrp 7`, `F_SETSIG 9`, `F_SETFL O_ASYNC`, `FIOSETOWN`, ...).
fn signal_owner_target(event: &Event) -> String {
    let arg = event.peer_pid.cast_signed();
    match event.detail {
        4 => "F_SETFL O_ASYNC".to_owned(),
        8 if arg > 0 => format!("F_SETOWN pid {arg}"),
        8 if arg < 0 => format!("F_SETOWN pgrp {}", arg.unsigned_abs()),
        8 => "F_SETOWN none".to_owned(),
        10 => format!("F_SETSIG {arg}"),
        15 => "F_SETOWN_EX".to_owned(),
        0x8901 => "FIOSETOWN".to_owned(),
        0x8902 => "SIOCSPGRP".to_owned(),
        0x5452 => "FIOASYNC".to_owned(),
        other => format!("command {other:#x}"),
    }
}

/// The other task of an ipc event, if it names one.
fn peer_of(event: &Event) -> Option<u32> {
    let named = match event.op {
        // Only `F_SETOWN` names a task; the other commands carry a signal or flags there.
        op::SIGNAL_OWNER => event.detail == 8 && event.peer_pid.cast_signed() > 0,
        op::SCHED | op::KERNEL_FS_WRITE => true,
        _ => ipc_target(event).is_some(),
    };
    (named && event.peer_pid != 0).then_some(event.peer_pid)
}

/// The address of the Unix socket in an ipc event: its path, `@name` for an abstract name (NUL
/// bytes in it shown as `@`), `<unnamed>` for a socket without one.
fn unix_path(event: &Event) -> String {
    let len = (event.path_len as usize).min(PATH_BUF_LEN);
    match &event.path[..len] {
        [] => "<unnamed>".to_owned(),
        [0, name @ ..] => {
            let shown: Vec<u8> = name
                .iter()
                .map(|&b| if b == 0 { b'@' } else { b })
                .collect();
            format!("@{}", String::from_utf8_lossy(&shown))
        }
        path => c_string(path),
    }
}

/// Record of decisions lost to a full ring buffer.
#[derive(Debug, Serialize)]
struct LostRecord<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_sha256: Option<&'a str>,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    submitted: Option<u64>,
    /// On a `counts` record: decisions counted instead of recorded, by why.
    #[serde(skip_serializing_if = "Option::is_none")]
    tallied: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed: Option<u64>,
    /// On a `counts` record: whether the totals are complete (see [`AuditLog::write_counts`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    complete: Option<bool>,
}

/// The kill switch set or lifted on a target (`oxd ctl deny-all|freeze|kill|resume`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SwitchRecord {
    pub time: String,
    pub policy: String,
    pub policy_sha256: String,
    pub generation: u64,
    pub op: &'static str,
    /// `deny-all`, `freeze`, `kill` or `resume`.
    pub action: &'static str,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// What was done beyond the switch itself, or what failed.
    pub outcome: String,
}

impl SwitchRecord {
    /// A record of `action` on the target, stamped now.
    pub fn new(
        action: &'static str,
        cgroup: &Path,
        cgroup_id: u64,
        policy: (&str, &str, u64),
        outcome: String,
    ) -> Self {
        Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: policy.0.to_owned(),
            policy_sha256: policy.1.to_owned(),
            generation: policy.2,
            op: "kill-switch",
            action,
            cgroup: cgroup.display().to_string(),
            cgroup_id,
            outcome,
        }
    }
}

/// Forks and clones a policy's `[process] max_processes` refused (counted by the kernel's
/// pids controller, not by oxd's programs), since the previous such record of the target.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LimitRecord {
    pub time: String,
    pub policy: String,
    pub policy_sha256: String,
    pub generation: u64,
    pub op: &'static str,
    /// What was refused: `fork` (forks and clones, threads included).
    pub of: &'static str,
    pub decision: &'static str,
    pub enforced: bool,
    pub rule: &'static str,
    /// The limit (`pids.max`).
    pub max: u32,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub count: u64,
}

impl LimitRecord {
    /// `count` forks refused by a limit of `max` on the target, stamped now.
    pub fn new(
        cgroup: &Path,
        cgroup_id: u64,
        policy: (&str, &str, u64),
        max: u32,
        count: u64,
    ) -> Self {
        Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: policy.0.to_owned(),
            policy_sha256: policy.1.to_owned(),
            generation: policy.2,
            op: "limit",
            of: "fork",
            decision: "deny",
            enforced: true,
            rule: "process.max_processes",
            max,
            cgroup: cgroup.display().to_string(),
            cgroup_id,
            count,
        }
    }
}

/// A grant made or withdrawn (`oxd ctl grant`, `oxd ctl revoke`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GrantRecord {
    pub time: String,
    pub policy: String,
    pub policy_sha256: String,
    pub generation: u64,
    pub op: &'static str,
    /// `grant` or `revoke`.
    pub action: &'static str,
    pub grant: u32,
    /// What the grant allows: `connect 127.0.0.1:8080/tcp`.
    pub allows: String,
    pub uses: u64,
    /// When it expires (RFC 3339).
    pub expires: String,
    pub cgroup: String,
    pub cgroup_id: u64,
}

/// A record an owner of the log (`oxd run`, the daemon) writes through its pump: not a
/// decision of oxd's programs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Note {
    Switch(SwitchRecord),
    Limit(LimitRecord),
    Grant(GrantRecord),
}

/// Decisions the kernel counted instead of recording each (see [`oxd_common::tally`]).
#[derive(Debug, Serialize)]
struct TallyRecord<'a> {
    time: String,
    policy: &'a str,
    policy_sha256: &'a str,
    generation: u64,
    op: &'static str,
    /// The operation counted.
    of: &'a str,
    decision: &'a str,
    enforced: bool,
    rule: &'a str,
    /// `counted` (an allowed decision under `--record counted`) or `rate-limited`.
    why: &'static str,
    count: u64,
}

/// The decision a [`TallyKey`] counts, as an [`Event`] without a target, for
/// [`Record::from_event`]: its operation, decision, rule and generation, and the mode of
/// `policy` (the policy of that generation, if known).
pub fn tally_event(key: &oxd_common::TallyKey, policy: Option<&Policy>) -> Event {
    // SAFETY: `Event` is plain data (#[repr(C)], integers and byte arrays only): all zeroes is
    // a valid value.
    let mut event: Event = unsafe { std::mem::zeroed() };
    event.generation = key.generation;
    event.op = u32::from(key.op);
    event.decision = u32::from(key.decision);
    event.rule_id = key.rule_id;
    event.reason = if key.rule_id == RULE_DEFAULT {
        reason::DEFAULT
    } else {
        reason::RULE
    };
    event.mode = match policy.map(|p| p.mode) {
        Some(crate::policy::Mode::Audit) => mode::AUDIT,
        _ => mode::ENFORCE,
    };
    event
}

/// The kernel's ring buffer totals, since its counters were created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingTotals {
    /// Decisions put into the ring buffer.
    pub submitted: u64,
    /// Decisions lost because the ring buffer was full.
    pub lost: u64,
    /// Allowed decisions counted in the kernel instead of recorded (`--record counted`).
    pub tallied: u64,
    /// Decisions over the record rate, counted in the kernel instead of recorded.
    pub suppressed: u64,
}

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of one record's line (without its newline), hex: the next record's `prev`.
pub fn line_hash(line: &[u8]) -> String {
    format!("{:x}", Sha256::digest(line))
}

/// A record as written: its place in the hash chain, then its fields.
#[derive(Serialize)]
struct Chained<'a, T: Serialize> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a T,
}

/// Which decisions are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordFilter {
    /// Every decision.
    #[default]
    All,
    /// Only denials (enforced or, in audit mode, not).
    Denied,
    /// Every denial; allowed decisions counted in the kernel per rule and written as `tally`
    /// records (and one by one only when the kernel's tally map is full).
    Counted,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "audit log {path} does not end with an oxd record (the line at byte {offset} is not one, \
         or was cut short), so its hash chain cannot be continued: give a new file"
    )]
    NotAChain { path: PathBuf, offset: u64 },
    #[error(
        "audit log {path} does not end with an oxd record (its last line is longer than \
         {MAX_LAST_LINE} bytes), so its hash chain cannot be continued: give a new file"
    )]
    LastLineTooLong { path: PathBuf },
}

/// The longest last line [`AuditLog::append`] reads back to continue a chain: far more than a
/// record (a 4,096-byte path escaped in JSON, its hex, the rule's text).
pub const MAX_LAST_LINE: u64 = 1 << 20;

/// How much [`last_line`] reads at a time, backwards.
const TAIL_CHUNK: u64 = 64 << 10;

/// The last non-empty line of a file.
#[derive(Debug, PartialEq, Eq)]
enum LastLine {
    /// The file holds no line.
    None,
    /// No newline within [`MAX_LAST_LINE`] bytes of the end.
    TooLong,
    Line {
        /// Where the line starts in the file.
        offset: u64,
        /// The line, without its newline.
        bytes: Vec<u8>,
        /// Whether a newline follows it.
        terminated: bool,
    },
}

/// The size of `file` and its last non-empty line, read backwards from the end in
/// [`TAIL_CHUNK`]s: at most [`MAX_LAST_LINE`] plus one chunk, whatever the file's size.
fn last_line<F: Read + Seek>(file: &mut F) -> std::io::Result<(u64, LastLine)> {
    let size = file.seek(SeekFrom::End(0))?;
    // The file's bytes from `start` to its end.
    let mut tail: Vec<u8> = Vec::new();
    let mut start = size;
    loop {
        if let Some(end) = tail.iter().rposition(|&b| b != b'\n') {
            let newline = tail[..end].iter().rposition(|&b| b == b'\n');
            if newline.is_some() || start == 0 {
                let first = newline.map_or(0, |n| n + 1);
                return Ok((
                    size,
                    LastLine::Line {
                        offset: start + first as u64,
                        bytes: tail[first..=end].to_vec(),
                        terminated: end + 1 < tail.len(),
                    },
                ));
            }
        }
        if start == 0 {
            return Ok((size, LastLine::None));
        }
        if size - start >= MAX_LAST_LINE {
            return Ok((size, LastLine::TooLong));
        }
        let step = start.min(TAIL_CHUNK);
        start -= step;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

/// Writes audit records as JSON lines, each carrying its sequence number (`seq`) and the
/// SHA-256 of the previous line (`prev`), so `oxd audit verify` can tell an edited, removed or
/// reordered record.
pub struct AuditLog {
    out: Box<dyn Write + Send>,
    seq: u64,
    prev: String,
    filter: RecordFilter,
    rotation: Option<Rotation>,
    /// Told of each file a rotation makes or deletes (oxd protects the new ones from the agent
    /// and forgets the deleted ones).
    on_new_file: Option<FileHook>,
}

/// A file a rotation makes or deletes, as [`AuditLog::on_new_file`]'s hook is told of it.
#[derive(Clone, Copy, Debug)]
pub enum FileChange<'a> {
    /// A new file, reachable at this path: it becomes the log once the hook returns `Ok`.
    New(&'a Path),
    /// The oldest part, deleted by name and still open at this path (`/proc/self/fd/N`).
    Gone(&'a Path),
}

/// What [`AuditLog::on_new_file`] calls; an error on [`FileChange::New`] stops the rotation
/// (the records go on into the current file, and a later record tries again).
pub type FileHook = Box<dyn FnMut(FileChange<'_>) -> Result<(), String> + Send>;

/// An [`AuditLog::on_new_file`] hook that protects each new file with `files` and forgets each
/// deleted one.
pub fn protect_each(mut files: crate::enforcer::FileGuard) -> FileHook {
    Box::new(move |change| match change {
        FileChange::New(path) => files.protect(path, false).map_err(|e| e.to_string()),
        FileChange::Gone(path) => files.unprotect(path).map_err(|e| e.to_string()),
    })
}

/// Size-based rotation of a log file: `FILE` becomes `FILE.1`, `FILE.1` becomes `FILE.2`, ...
/// up to `keep` parts; the chain goes on in the new `FILE`.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
    path: PathBuf,
    written: u64,
}

impl Rotation {
    pub fn new(max_bytes: u64, keep: u32) -> Self {
        Self {
            max_bytes,
            keep: keep.max(1),
            path: PathBuf::new(),
            written: 0,
        }
    }

    fn part(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts the parts and opens a fresh file, which `hook` is told of before the log's name
    /// reaches it.
    ///
    /// The log's name never goes missing and never names an unprotected file: the new file is
    /// made without a name (`O_TMPFILE`; or under a fresh name of its own where the file system
    /// cannot), protected, given a name of its own, and then renamed over the log's name, which
    /// is atomic. The current file gets its `.1` name as a hard link first. An agent waiting for
    /// `FILE.1` to appear finds `FILE` protected already. If the new file cannot be protected
    /// there is no rotation (the error says why).
    fn rotate(&mut self, mut hook: Option<&mut FileHook>) -> std::io::Result<std::fs::File> {
        let (file, fresh) = self.fresh_file()?;
        if let Some(hook) = hook.as_mut() {
            if let Err(e) = hook(FileChange::New(&fresh)) {
                if !fresh.starts_with("/proc/self/fd") {
                    let _ = std::fs::remove_file(&fresh);
                }
                return Err(std::io::Error::other(format!(
                    "cannot protect the new file: {e}"
                )));
            }
        }
        let named = self.name_fresh_file(&fresh)?;
        self.delete_oldest(hook);
        for n in (1..self.keep).rev() {
            let from = self.part(n);
            if from.exists() {
                std::fs::rename(&from, self.part(n + 1))?;
            }
        }
        let first = self.part(1);
        let linked = std::fs::hard_link(&self.path, &first).or_else(|_| {
            // Someone made a FILE.1 since: it goes; or links are not possible here.
            let _ = std::fs::remove_file(&first);
            std::fs::hard_link(&self.path, &first)
        });
        if linked.is_err() {
            std::fs::rename(&self.path, &first)?;
        }
        std::fs::rename(&named, &self.path)?;
        self.written = 0;
        Ok(file)
    }

    /// Deletes the oldest part, then tells `hook` of it while it is still open (so the guard
    /// forgets it: no name is left unprotected in between).
    fn delete_oldest(&self, hook: Option<&mut FileHook>) {
        let oldest = self.part(self.keep);
        let Ok(held) = std::fs::File::open(&oldest) else {
            return;
        };
        if std::fs::remove_file(&oldest).is_err() {
            return;
        }
        if let Some(hook) = hook {
            use std::os::fd::AsRawFd;
            let open = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
            if let Err(e) = hook(FileChange::Gone(&open)) {
                tracing::warn!("the deleted part {} stays guarded: {e}", oldest.display());
            }
        }
    }

    /// The new file, opened for appending, and a path that reaches it now.
    fn fresh_file(&self) -> std::io::Result<(std::fs::File, PathBuf)> {
        use std::os::{
            fd::AsRawFd,
            unix::fs::{OpenOptionsExt, PermissionsExt},
        };
        let mode = std::fs::metadata(&self.path).map_or(0o600, |m| m.permissions().mode() & 0o777);
        let dir = self.dir();
        match std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(mode)
            .open(&dir)
        {
            Ok(file) => {
                // The file has no name yet: the process's own descriptor reaches it.
                let fresh = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                return Ok((file, fresh));
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => return Err(e),
        }
        let mut tries = 0;
        loop {
            let fresh = self.temporary_name();
            match std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(mode)
                .open(&fresh)
            {
                Ok(file) => return Ok((file, fresh)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => {
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives the fresh file a name of its own next to the log (it has one already unless it was
    /// made by `O_TMPFILE`).
    fn name_fresh_file(&self, fresh: &Path) -> std::io::Result<PathBuf> {
        if !fresh.starts_with("/proc/self/fd") {
            return Ok(fresh.to_owned());
        }
        let mut tries = 0;
        loop {
            let name = self.temporary_name();
            match nix::unistd::linkat(
                None,
                fresh,
                None,
                &name,
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(name),
                Err(nix::errno::Errno::EEXIST) if tries < 16 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// `.FILE.oxd-RANDOM` next to the log: an agent that can write to the directory cannot
    /// take the names in advance.
    fn temporary_name(&self) -> PathBuf {
        let mut random = [0u8; 8];
        // SAFETY: getrandom writes at most `random.len()` bytes into the buffer.
        let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if got != 8 {
            // No entropy (never on a booted system): the clock, which is still unlikely.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let nanos = now.as_secs() << 30 ^ u64::from(now.subsec_nanos());
            random = (nanos ^ u64::from(std::process::id()) << 44).to_ne_bytes();
        }
        let mut name = std::ffi::OsString::from(".");
        name.push(self.path.file_name().unwrap_or_default());
        name.push(format!(".oxd-{:016x}", u64::from_ne_bytes(random)));
        self.dir().join(name)
    }
}

impl AuditLog {
    /// A new chain written to `out`.
    pub fn new(out: Box<dyn Write + Send>, filter: RecordFilter) -> Self {
        Self {
            out,
            seq: 0,
            prev: GENESIS.to_owned(),
            filter,
            rotation: None,
            on_new_file: None,
        }
    }

    /// Tells `f` of each file a rotation makes or deletes ([`FileChange`]).
    pub fn on_new_file(&mut self, f: FileHook) {
        self.on_new_file = Some(f);
    }

    /// Appends to the log at `path`, continuing the chain of the records already there, and
    /// rotating it by size if `rotation` is given.
    ///
    /// Only the end of the file is read (at most [`MAX_LAST_LINE`] bytes and a chunk): its last
    /// non-empty line must be an oxd record (a JSON object with `seq`); the chain goes on from
    /// its hash. A last line cut short (a crash in the middle of a write), a foreign file, or a
    /// last line longer than the bound is refused: the chain cannot be continued and nothing is
    /// written. A complete record whose newline is missing gets it before the next record.
    /// Something other than a regular file (a pipe, a terminal, `/dev/null`) holds no chain to
    /// continue: a new one starts there, and it is never rotated.
    pub fn append(
        path: &Path,
        filter: RecordFilter,
        rotation: Option<Rotation>,
    ) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(open_err)?;
        let mut log = Self::new(Box::new(std::io::sink()), filter);
        let regular = file.metadata().map_err(open_err)?.file_type().is_file();
        let (size, last) = if regular {
            last_line(&mut file).map_err(open_err)?
        } else {
            if rotation.is_some() {
                tracing::warn!(
                    "{} is not a regular file: it is not rotated",
                    path.display()
                );
            }
            (0, LastLine::None)
        };
        match last {
            LastLine::None => {}
            LastLine::TooLong => {
                return Err(AuditError::LastLineTooLong {
                    path: path.to_owned(),
                })
            }
            LastLine::Line {
                offset,
                bytes,
                terminated,
            } => {
                let seq = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                    .ok_or_else(|| AuditError::NotAChain {
                        path: path.to_owned(),
                        offset,
                    })?;
                if !terminated {
                    file.write_all(b"\n").map_err(open_err)?;
                }
                log.seq = seq + 1;
                log.prev = line_hash(&bytes);
            }
        }
        log.out = Box::new(std::io::BufWriter::new(file));
        log.rotation = rotation.filter(|_| regular).map(|mut r| {
            path.clone_into(&mut r.path);
            r.written = size;
            r
        });
        Ok(log)
    }

    fn write_chained<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let line = serde_json::to_vec(&Chained {
            seq: self.seq,
            prev: &self.prev,
            record,
        })?;
        if let Some(rotation) = &mut self.rotation {
            let size = line.len() as u64 + 1;
            if rotation.written > 0 && rotation.written + size > rotation.max_bytes {
                self.out.flush()?;
                match rotation.rotate(self.on_new_file.as_mut()) {
                    Ok(file) => self.out = Box::new(std::io::BufWriter::new(file)),
                    Err(e) => {
                        // The records go on into the current file, which stays guarded; the
                        // next try is once another `max_bytes` are written.
                        tracing::error!(
                            "cannot rotate the audit log {}: {e}",
                            rotation.path.display()
                        );
                        rotation.written = 0;
                    }
                }
            }
            rotation.written += size;
        }
        self.out.write_all(&line)?;
        self.out.write_all(b"\n")?;
        self.seq += 1;
        self.prev = line_hash(&line);
        Ok(())
    }

    /// Writes a decision, unless the filter leaves it out.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        if self.filter == RecordFilter::Denied && record.decision != "deny" {
            return Ok(());
        }
        self.write_chained(record)
    }

    /// Reports decisions lost to a full ring buffer (always written); `policy` when only one
    /// policy could have made them.
    pub fn write_lost(&mut self, policy: Option<&Policy>, count: u64) -> std::io::Result<()> {
        self.write_lost_record(policy, count, None)
    }

    /// [`Self::write_lost`], with the kernel's ring buffer `totals`.
    pub fn write_lost_with_totals(
        &mut self,
        policy: Option<&Policy>,
        count: u64,
        totals: RingTotals,
    ) -> std::io::Result<()> {
        self.write_lost_record(policy, count, Some(totals))
    }

    fn write_lost_record(
        &mut self,
        policy: Option<&Policy>,
        count: u64,
        totals: Option<RingTotals>,
    ) -> std::io::Result<()> {
        let record = LostRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: policy.map(|p| p.name.as_str()),
            policy_sha256: policy.map(|p| p.sha256.as_str()),
            op: "lost",
            count: Some(count),
            lost_total: totals.map(|t| t.lost),
            submitted: totals.map(|t| t.submitted),
            tallied: None,
            suppressed: None,
            complete: None,
        };
        self.write_chained(&record)
    }

    /// Writes the kernel's ring buffer `totals` (always written: a `counts` record).
    /// `complete`: the counters were created for this pump alone and no decision can come after
    /// its last drain (`oxd run`, whose agent is gone): then the decision records since the
    /// previous `counts` record number `submitted`, and the `lost` records' counts add up to
    /// `lost_total`, which `oxd audit verify` checks.
    pub fn write_counts(
        &mut self,
        policy: Option<&Policy>,
        totals: RingTotals,
        complete: bool,
    ) -> std::io::Result<()> {
        let record = LostRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: policy.map(|p| p.name.as_str()),
            policy_sha256: policy.map(|p| p.sha256.as_str()),
            op: "counts",
            count: None,
            lost_total: Some(totals.lost),
            submitted: Some(totals.submitted),
            tallied: Some(totals.tallied),
            suppressed: Some(totals.suppressed),
            complete: Some(complete),
        };
        self.write_chained(&record)
    }

    /// Writes a `tally` record: `count` decisions like `like` (its operation, decision, rule
    /// and policy) that the kernel counted instead of recording each; `suppressed`: over the
    /// record rate, else allowed decisions under `--record counted`. Always written.
    pub fn write_tally(
        &mut self,
        like: &Record,
        suppressed: bool,
        count: u64,
    ) -> std::io::Result<()> {
        let record = TallyRecord {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            policy: &like.policy,
            policy_sha256: &like.policy_sha256,
            generation: like.generation,
            op: "tally",
            of: &like.op,
            decision: &like.decision,
            enforced: like.enforced,
            rule: &like.rule,
            why: if suppressed {
                "rate-limited"
            } else {
                "counted"
            },
            count,
        };
        self.write_chained(&record)
    }

    /// Writes an owner's record (`kill-switch`, `limit`; always written).
    pub fn write_note(&mut self, note: &Note) -> std::io::Result<()> {
        self.write_chained(note)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A denied loopback connect by `curl`, decided by generation `generation`: a decision as the
/// kernel reports one, for tests.
#[cfg(test)]
pub(crate) fn connect_event(generation: u64, decision: u32) -> Event {
    Event {
        boot_ns: 0,
        cgroup_id: 42,
        generation,
        pid: 10,
        tid: 11,
        uid: 0,
        gid: 0,
        op: op::CONNECT4,
        decision,
        reason: reason::RULE,
        rule_id: 0,
        mode: mode::ENFORCE,
        proto: proto::TCP,
        path_len: 0,
        access: 0,
        detail: 0,
        peer_pid: 0,
        _pad1: 0,
        port: 8080,
        _pad0: 0,
        addr: Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 2]).octets(),
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        path: [0; PATH_BUF_LEN],
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn event() -> Event {
        connect_event(1, action::DENY)
    }

    /// The bytes the kernel side outputs for `event`: its header, then `path_len` path bytes.
    fn ring_record(event: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain data without implicit padding.
        let all = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(event).cast::<u8>(), size_of::<Event>())
        };
        all[..EVENT_HEADER_LEN + event.path_len as usize].to_vec()
    }

    fn with_path(path: &[u8]) -> Event {
        let mut event = event();
        event.op = op::OPEN;
        event.path[..path.len()].copy_from_slice(path);
        event.path_len = u32::try_from(path.len()).unwrap();
        event
    }

    #[test]
    fn a_record_without_a_path_is_its_header() {
        let event = event();
        let bytes = ring_record(&event);
        assert_eq!(bytes.len(), EVENT_HEADER_LEN);
        let decoded = decode_event(&bytes).unwrap();
        assert_eq!(decoded.port, 8080);
        assert_eq!(decoded.generation, 1);
        assert_eq!(decoded.path_len, 0);
        assert!(decoded.path.iter().all(|&b| b == 0));
    }

    #[test]
    fn short_and_long_paths_arrive_whole() {
        let short = b"/a\0".to_vec();
        let mut long = vec![b'/'];
        long.extend(std::iter::repeat_n(b'x', PATH_BUF_LEN - 2));
        long.push(0);
        for path in [short, long] {
            let bytes = ring_record(&with_path(&path));
            assert_eq!(bytes.len(), EVENT_HEADER_LEN + path.len());
            let decoded = decode_event(&bytes).unwrap();
            assert_eq!(decoded.path_len as usize, path.len());
            assert_eq!(&decoded.path[..path.len()], &path[..]);
            assert!(decoded.path[path.len()..].iter().all(|&b| b == 0));
            let record = Record::from_event(&decoded, None, &Clock::new());
            assert_eq!(
                record.target.len(),
                path.len() - 1,
                "the whole path, without its NUL"
            );
        }
    }

    #[test]
    fn records_of_another_length_are_errors() {
        assert_eq!(
            decode_event(&[0; 7]).err().unwrap(),
            DecodeError::Short { len: 7 }
        );
        assert_eq!(
            decode_event(&[]).err().unwrap(),
            DecodeError::Short { len: 0 }
        );
        let bytes = ring_record(&with_path(b"/etc/passwd\0"));
        // Cut short, or with bytes the header does not announce.
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            decode_event(cut).err().unwrap(),
            DecodeError::Inconsistent {
                len: cut.len(),
                path_len: 12
            }
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_event(&longer),
            Err(DecodeError::Inconsistent { path_len: 12, .. })
        ));
        // A path length past the path buffer, with as many bytes as it claims.
        let mut huge = with_path(b"/x\0");
        huge.path_len = u32::try_from(PATH_BUF_LEN).unwrap() + 1;
        let mut bytes = ring_record(&with_path(b"/x\0"))[..EVENT_HEADER_LEN].to_vec();
        // SAFETY: as in `ring_record`, the header only.
        let header = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&huge).cast::<u8>(), EVENT_HEADER_LEN)
        };
        bytes.copy_from_slice(header);
        bytes.resize(EVENT_HEADER_LEN + PATH_BUF_LEN + 1, b'a');
        assert_eq!(
            decode_event(&bytes).err().unwrap(),
            DecodeError::Inconsistent {
                len: bytes.len(),
                path_len: huge.path_len
            }
        );
    }

    #[test]
    fn connect_record_names_rule_and_target() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[network]\n[[network.deny]]\ncidr = \"127.0.0.2\"\n",
        )
        .unwrap();
        let record = Record::from_event(&event(), Some(&policy), &Clock::new());
        assert_eq!(record.op, "connect");
        assert_eq!(record.target, "127.0.0.2:8080");
        assert_eq!(record.decision, "deny");
        assert_eq!(record.rule, "network.deny[0]");
        assert_eq!(record.protocol.as_deref(), Some("tcp"));
        assert_eq!(record.comm, "curl");
        assert!(record.enforced);
    }

    #[test]
    fn socket_record_names_the_socket_and_switch() {
        let policy = Policy::parse(Path::new("p.toml"), "[network]\nicmp = \"deny\"\n").unwrap();
        let mut e = event();
        e.op = op::SOCKET;
        e.proto = proto::ICMP;
        e.detail = 0x0a02_003a; // AF_INET6 << 24 | SOCK_DGRAM << 16 | IPPROTO_ICMPV6
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.op, "socket");
        assert_eq!(record.target, "ipv6 dgram proto 58");
        assert_eq!(record.protocol.as_deref(), Some("icmp"));
        assert_eq!(record.rule, "network.icmp");
        assert_eq!(record.rule_text.as_deref(), Some("icmp = \"deny\""));
    }

    #[test]
    fn exec_record_uses_resolved_path() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.op = op::EXEC;
        e.rule_id = RULE_DEFAULT;
        e.reason = reason::DEFAULT;
        e.mode = mode::AUDIT;
        e.path[..9].copy_from_slice(b"/bin/ls\0\0");
        e.path_len = 8;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.target, "/bin/ls");
        assert_eq!(record.rule, "default");
        assert!(record.protocol.is_none());
        assert!(!record.enforced);
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains("\"op\":\"exec\""), "{line}");
    }

    #[test]
    fn signal_owner_records_name_the_command_and_its_argument() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.op = op::SIGNAL_OWNER;
        e.rule_id = RULE_DEFAULT;
        e.reason = reason::SIGNAL_OWNER;
        let cases: [(u32, i32, &str, Option<u32>); 6] = [
            (8, 4321, "F_SETOWN pid 4321", Some(4321)),
            (8, -17, "F_SETOWN pgrp 17", None),
            (10, 9, "F_SETSIG 9", None),
            (4, 0o20002, "F_SETFL O_ASYNC", None),
            (15, 0, "F_SETOWN_EX", None),
            (0x8901, 0, "FIOSETOWN", None),
        ];
        for (cmd, arg, target, peer) in cases {
            e.detail = cmd;
            e.peer_pid = arg.cast_unsigned();
            let record = Record::from_event(&e, Some(&policy), &Clock::new());
            assert_eq!(record.op, "signal-owner");
            assert_eq!(record.target, target);
            assert_eq!((record.detail, record.peer_pid), (Some(cmd), peer));
        }
        assert!(Record::from_event(&e, Some(&policy), &Clock::new())
            .reason
            .starts_with("a file's I/O signals"));
    }

    #[test]
    fn guard_fs_records_name_the_command_cgroup_and_file_system() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.rule_id = RULE_DEFAULT;
        e.reason = reason::GUARD;
        e.peer_pid = 0;
        let cases: [(u32, u32, &str, &str); 6] = [
            (op::BPF, 5, "bpf", "BPF_PROG_LOAD"),
            (op::BPF, 34, "bpf", "BPF_LINK_DETACH"),
            (op::BPF, 99, "bpf", "command 99"),
            (op::CGROUP_WRITE, 1, "cgroup-write", "cgroup 1"),
            (op::CGROUP_WRITE, 0, "cgroup-write", "cgroup"),
            (op::KERNEL_FS_WRITE, 0xcafe_4a11, "kernel-fs-write", "bpf"),
        ];
        for (event_op, detail, name, target) in cases {
            e.op = event_op;
            e.detail = detail;
            let record = Record::from_event(&e, Some(&policy), &Clock::new());
            assert_eq!((record.op.as_str(), record.target.as_str()), (name, target));
            assert_eq!((record.detail, record.peer_pid), (Some(detail), None));
            assert_eq!(record.decision, "deny");
            assert!(record.reason.starts_with("guard:"), "{}", record.reason);
        }
        e.op = op::KERNEL_FS_WRITE;
        e.detail = 0x9fa0;
        assert_eq!(
            Record::from_event(&e, Some(&policy), &Clock::new()).target,
            "proc"
        );
        e.peer_pid = 77;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.target, "proc pid 77");
        assert_eq!((record.detail, record.peer_pid), (Some(0x9fa0), Some(77)));
    }

    #[test]
    fn ipc_records_name_the_other_party() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.op = op::SIGNAL;
        e.rule_id = RULE_DEFAULT;
        e.reason = reason::IPC_OUTSIDE;
        e.detail = 9;
        e.peer_pid = 1234;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.op, "signal");
        assert_eq!(record.target, "pid 1234");
        assert_eq!((record.detail, record.peer_pid), (Some(9), Some(1234)));
        assert_eq!(record.reason, "outside the agent's confinement");
        assert!(record.protocol.is_none());

        e.op = op::UNIX_CONNECT;
        e.path[..6].copy_from_slice(b"\0x11\0a");
        e.path_len = 6;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.target, "@x11@a");
        assert_eq!(record.detail, None);
        e.path[..8].copy_from_slice(b"/run/s\0\0");
        e.path_len = 7;
        assert_eq!(
            Record::from_event(&e, Some(&policy), &Clock::new()).target,
            "/run/s"
        );
        e.path_len = 0;
        assert_eq!(
            Record::from_event(&e, Some(&policy), &Clock::new()).target,
            "<unnamed>"
        );

        e.op = op::TTY_INJECT;
        e.detail = 0x5412;
        e.peer_pid = 0;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(
            (record.op.as_str(), record.target.as_str()),
            ("tty-inject", "TIOCSTI")
        );
        assert_eq!((record.detail, record.peer_pid), (Some(0x5412), None));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_exactly() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.op = op::OPEN;
        let path = b"/tmp/a\xff\xfeb\n";
        e.path[..path.len()].copy_from_slice(path);
        e.path_len = u32::try_from(path.len()).unwrap();
        e.comm = *b"x\xc3(\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.target, "/tmp/a\u{fffd}\u{fffd}b\n");
        assert_eq!(
            unhex(record.target_bytes.as_deref().unwrap()).unwrap(),
            path
        );
        assert_eq!(
            unhex(record.comm_bytes.as_deref().unwrap()).unwrap(),
            b"x\xc3("
        );
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);

        // Valid names: no extra field.
        e.path[..8].copy_from_slice(b"/bin/ls\0");
        e.path_len = 7;
        e.comm = *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!((record.target_bytes, record.comm_bytes), (None, None));
        let line = serde_json::to_string(&Record::from_event(&e, Some(&policy), &Clock::new()));
        assert!(!line.unwrap().contains("_bytes"));

        // An abstract socket name with a NUL inside: `@a@b` could be `\0a@b` or `\0a\0b`.
        e.op = op::UNIX_CONNECT;
        e.path[..4].copy_from_slice(b"\0a\0b");
        e.path_len = 4;
        let record = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(record.target, "@a@b");
        assert_eq!(record.target_bytes.as_deref(), Some("00610062"));
        e.path[..4].copy_from_slice(b"\0a@b");
        assert_eq!(
            Record::from_event(&e, Some(&policy), &Clock::new()).target_bytes,
            None
        );
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    /// A log of `runs` `oxd run`s, each with `decisions` decision records, one `lost` record
    /// of 2 and a complete `counts` record that claims `submitted` decisions and 2 lost.
    fn run_log(path: &Path, runs: usize, decisions: usize, submitted: u64) {
        let mut log = AuditLog::append(path, RecordFilter::All, None).unwrap();
        for _ in 0..runs {
            for _ in 0..decisions {
                let event = connect_event(1, action::DENY);
                log.write(&Record::from_event(&event, None, &Clock::new()))
                    .unwrap();
            }
            log.write_lost_with_totals(
                None,
                2,
                RingTotals {
                    submitted,
                    lost: 2,
                    ..RingTotals::default()
                },
            )
            .unwrap();
            log.write_counts(
                None,
                RingTotals {
                    submitted,
                    lost: 2,
                    ..RingTotals::default()
                },
                true,
            )
            .unwrap();
        }
        log.flush().unwrap();
    }

    #[test]
    fn verify_checks_the_records_of_each_run_against_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        run_log(&path, 2, 3, 3);
        let report = read::verify(std::slice::from_ref(&path), false).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.counts_checked, 2);

        // Two records short of what the kernel submitted, with an intact chain (the log of a
        // pump that never wrote them, or records removed and the chain rewritten).
        let short = dir.path().join("short.jsonl");
        run_log(&short, 1, 3, 5);
        let report = read::verify(std::slice::from_ref(&short), false).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("5 decision(s)")
                && report.problems[0].contains("2 missing"),
            "{:?}",
            report.problems
        );

        // Records the kernel did not submit, and `lost` records that do not add up.
        let extra = dir.path().join("extra.jsonl");
        run_log(&extra, 1, 3, 1);
        let mut log = AuditLog::append(&extra, RecordFilter::All, None).unwrap();
        log.write_lost(None, 1).unwrap();
        log.write_counts(
            None,
            RingTotals {
                submitted: 0,
                lost: 0,
                ..RingTotals::default()
            },
            true,
        )
        .unwrap();
        log.flush().unwrap();
        let report = read::verify(std::slice::from_ref(&extra), false).unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("2 more than"),
            "{:?}",
            report.problems
        );
        assert!(
            report.problems[1].contains("report 1"),
            "{:?}",
            report.problems
        );

        // Tallies against the kernel's totals: one allowed decision counted short.
        let tallied = dir.path().join("tallied.jsonl");
        let mut log = AuditLog::append(&tallied, RecordFilter::All, None).unwrap();
        let like = Record::from_event(&connect_event(1, action::ALLOW), None, &Clock::new());
        log.write_tally(&like, false, 3).unwrap();
        log.write_tally(&like, true, 5).unwrap();
        let totals = RingTotals {
            tallied: 4,
            suppressed: 5,
            ..RingTotals::default()
        };
        log.write_counts(None, totals, true).unwrap();
        log.flush().unwrap();
        let report = read::verify(std::slice::from_ref(&tallied), false).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].contains(
                "counted 4 allowed decisions counted, but the `tally` \
                                         records"
            ),
            "{:?}",
            report.problems
        );

        // A daemon's counts (not complete) and the first part of a --partial log are not
        // checked.
        let daemon = dir.path().join("daemon.jsonl");
        let mut log = AuditLog::append(&daemon, RecordFilter::All, None).unwrap();
        log.write_counts(
            None,
            RingTotals {
                submitted: 9,
                lost: 0,
                ..RingTotals::default()
            },
            false,
        )
        .unwrap();
        log.flush().unwrap();
        let report = read::verify(std::slice::from_ref(&daemon), false).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.counts_checked, 0);
        let report = read::verify(std::slice::from_ref(&short), true).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.counts_checked, 0);
    }

    fn records(n: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut log = AuditLog::append(&path, RecordFilter::All, None).unwrap();
        for _ in 0..n {
            log.write_lost(None, 1).unwrap();
        }
        log.flush().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn append_reads_only_the_end_of_a_large_log() {
        // 256 MiB that `append` would have to read (a hole: no disk) and then a chain.
        const HOLE: u64 = 256 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let chain = records(50);
        {
            let mut f = std::fs::File::create(&path).unwrap();
            f.set_len(HOLE).unwrap();
            f.seek(SeekFrom::End(0)).unwrap();
            f.write_all(b"\n").unwrap();
            f.write_all(&chain).unwrap();
        }
        let mut counting = Counting {
            inner: std::fs::File::open(&path).unwrap(),
            read: 0,
        };
        let (size, last) = last_line(&mut counting).unwrap();
        assert_eq!(size, HOLE + 1 + chain.len() as u64);
        let want = chain[..chain.len() - 1]
            .rsplit(|&b| b == b'\n')
            .next()
            .unwrap();
        assert_eq!(
            last,
            LastLine::Line {
                offset: size - want.len() as u64 - 1,
                bytes: want.to_vec(),
                terminated: true,
            }
        );
        assert!(counting.read <= TAIL_CHUNK, "read {} bytes", counting.read);

        // The chain goes on from the last record.
        let mut log = AuditLog::append(&path, RecordFilter::All, None).unwrap();
        log.write_lost(None, 2).unwrap();
        log.flush().unwrap();
        let mut rest = std::fs::File::open(&path).unwrap();
        rest.seek(SeekFrom::Start(HOLE + 1)).unwrap();
        let mut tail = Vec::new();
        rest.read_to_end(&mut tail).unwrap();
        let tail_path = dir.path().join("tail.jsonl");
        std::fs::write(&tail_path, &tail).unwrap();
        let report = read::verify(&[tail_path], false).unwrap();
        assert_eq!(report.records, 51);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_last_line_without_newline_within_the_bound_is_refused_after_a_bounded_read() {
        let mut data = records(3);
        data.resize(
            data.len() + usize::try_from(MAX_LAST_LINE).unwrap() + 10,
            b'x',
        );
        let mut counting = Counting {
            inner: std::io::Cursor::new(&data),
            read: 0,
        };
        assert_eq!(last_line(&mut counting).unwrap().1, LastLine::TooLong);
        assert!(counting.read <= MAX_LAST_LINE + TAIL_CHUNK);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(
            AuditLog::append(&path, RecordFilter::All, None),
            Err(AuditError::LastLineTooLong { .. })
        ));
    }

    #[test]
    fn a_cut_short_last_record_is_refused_and_a_missing_newline_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let chain = records(3);
        // Cut in the middle of the last record: refused, the file unchanged.
        let cut = &chain[..chain.len() - 20];
        std::fs::write(&path, cut).unwrap();
        let start = chain[..chain.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        match AuditLog::append(&path, RecordFilter::All, None) {
            Err(AuditError::NotAChain { offset, .. }) => assert_eq!(offset, start as u64),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read(&path).unwrap(), cut);

        // Whole but without its newline: the newline is written before the next record.
        std::fs::write(&path, &chain[..chain.len() - 1]).unwrap();
        let mut log = AuditLog::append(&path, RecordFilter::All, None).unwrap();
        log.write_lost(None, 1).unwrap();
        log.flush().unwrap();
        let report = read::verify(std::slice::from_ref(&path), false).unwrap();
        assert_eq!(report.records, 4);
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // Blank lines after the last record are passed over; an empty file starts a chain.
        std::fs::write(&path, [&chain[..], b"\n\n"].concat()).unwrap();
        assert_eq!(
            AuditLog::append(&path, RecordFilter::All, None)
                .unwrap()
                .seq,
            3
        );
        std::fs::write(&path, b"\n").unwrap();
        assert_eq!(
            AuditLog::append(&path, RecordFilter::All, None)
                .unwrap()
                .seq,
            0
        );
        // Not a file: a new chain, never rotated (renaming /dev/null would be a disaster).
        let null = AuditLog::append(
            Path::new("/dev/null"),
            RecordFilter::All,
            Some(Rotation::new(10, 2)),
        )
        .unwrap();
        assert_eq!((null.seq, null.rotation.is_none()), (0, true));
    }

    #[test]
    fn a_rotation_protects_the_new_file_before_the_logs_name_reaches_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        let policy = Policy::parse(Path::new("p.toml"), "[network]\n").unwrap();
        let mut audit =
            AuditLog::append(&log, RecordFilter::All, Some(Rotation::new(300, 2))).unwrap();
        // What the hook saw: the new file's inode, and the inode the log's name held then.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (hook_seen, hook_log) = (seen.clone(), log.clone());
        let gone = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook_gone = gone.clone();
        audit.on_new_file(Box::new(move |change| {
            match change {
                FileChange::New(path) => {
                    let new = std::fs::metadata(path).unwrap().ino();
                    let named = std::fs::metadata(&hook_log).unwrap().ino();
                    hook_seen.lock().unwrap().push((new, named));
                }
                // Deleted by name, still open.
                FileChange::Gone(path) => {
                    hook_gone
                        .lock()
                        .unwrap()
                        .push(std::fs::metadata(path).unwrap().ino());
                }
            }
            Ok(())
        }));
        let mut inodes = vec![std::fs::metadata(&log).unwrap().ino()];
        for _ in 0..12 {
            audit.write_lost(Some(&policy), 1).unwrap();
            audit.flush().unwrap();
            let now = std::fs::metadata(&log).unwrap().ino();
            if inodes.last() != Some(&now) {
                inodes.push(now);
            }
        }
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 2, "rotated at least twice: {seen:?}");
        for (i, (new, named)) in seen.iter().enumerate() {
            // Protected first, under the log's name only after.
            assert_eq!(*named, inodes[i], "{seen:?} {inodes:?}");
            assert_eq!(*new, inodes[i + 1], "{seen:?} {inodes:?}");
        }
        // Each part deleted was one of the files the log had been.
        let gone = gone.lock().unwrap().clone();
        assert_eq!(gone.len(), seen.len() - 2, "{gone:?} {seen:?}");
        assert_eq!(gone, inodes[..gone.len()], "{gone:?} {inodes:?}");
        // No temporary name is left behind; the parts are whole.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]);
        let files = [
            dir.path().join("a.jsonl.2"),
            dir.path().join("a.jsonl.1"),
            log,
        ];
        let report = read::verify(&files, true).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_new_file_that_cannot_be_protected_is_not_rotated_to() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        let policy = Policy::parse(Path::new("p.toml"), "[network]\n").unwrap();
        let mut audit =
            AuditLog::append(&log, RecordFilter::All, Some(Rotation::new(300, 2))).unwrap();
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let hook_tries = tries.clone();
        audit.on_new_file(Box::new(move |change| match change {
            FileChange::New(_) => {
                hook_tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err("the guard's map is full".into())
            }
            FileChange::Gone(_) => Ok(()),
        }));
        for _ in 0..12 {
            audit.write_lost(Some(&policy), 1).unwrap();
        }
        audit.flush().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.jsonl"], "no part, no temporary name left");
        let attempts = tries.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (2..12).contains(&attempts),
            "tried again after each max_bytes, not on every record: {attempts}"
        );
        let report = read::verify(&[log], false).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 12);
    }

    #[test]
    fn guard_kernel_records_name_what_was_refused() {
        let policy = Policy::parse(Path::new("p.toml"), "[exec]\n").unwrap();
        let mut e = event();
        e.rule_id = RULE_DEFAULT;
        e.reason = reason::GUARD;
        let show = |e: &Event| {
            let r = Record::from_event(e, Some(&policy), &Clock::new());
            assert_eq!((r.decision.as_str(), r.enforced), ("deny", true));
            assert!(r.reason.starts_with("guard:"), "{}", r.reason);
            (r.op, r.target, r.detail, r.peer_pid)
        };
        e.op = op::KERNEL_LOAD;
        e.detail = 2;
        assert_eq!(
            show(&e),
            ("kernel-load".into(), "module".into(), Some(2), None)
        );
        e.op = op::CAPABILITY;
        e.detail = 16;
        assert_eq!(
            show(&e),
            ("capability".into(), "CAP_SYS_MODULE".into(), Some(16), None)
        );
        e.detail = 39;
        assert_eq!(show(&e).1, "CAP_BPF");
        e.op = op::DEVICE_WRITE;
        e.detail = 7 << 20 | 3;
        assert_eq!(
            show(&e),
            (
                "device-write".into(),
                "block 7:3".into(),
                Some(7 << 20 | 3),
                None
            )
        );
        e.op = op::SCHED;
        e.detail = 1;
        e.peer_pid = 321;
        assert_eq!(
            show(&e),
            ("sched".into(), "pid 321".into(), Some(1), Some(321))
        );
        e.op = op::MODULE_REQUEST;
        e.peer_pid = 0;
        e.path[..9].copy_from_slice(b"net-pf-5\0");
        e.path_len = 9;
        assert_eq!(
            show(&e),
            ("module-request".into(), "net-pf-5".into(), None, None)
        );
        e.op = op::SOCKET;
        e.proto = proto::RAW;
        e.detail = 17 << 24 | 3 << 16 | 0x300;
        let r = Record::from_event(&e, Some(&policy), &Clock::new());
        assert_eq!(r.target, "packet raw proto 768");
        assert_eq!(r.protocol.as_deref(), Some("raw"));
    }
}
