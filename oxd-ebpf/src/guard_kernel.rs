//! The guard's part about oxd's own processes, the kernel, raw devices and raw sockets: what a
//! confined task is denied whatever its uid, capabilities or policy (see [`crate::guard`]).
//!
//! - oxd's processes (the `PROTECTED` map, by thread-group id): no signal (`task_kill`, signal
//!   0 excepted), no ptrace access (`ptrace_access_check`: attach, `/proc/PID/mem`,
//!   `process_vm_*`, `pidfd_getfd`, ...), no change of their scheduling (`task_setnice`,
//!   `task_setioprio`, `task_setscheduler`, `task_movememory`). These run beside the
//!   `[ipc]` programs, which only some policies attach.
//! - The kernel: nothing but firmware is read or loaded into it (`kernel_read_file`,
//!   `kernel_load_data`: modules, kexec images, IMA policies, certificates), no module is
//!   autoloaded on a confined task's behalf (`kernel_module_request`), and the capabilities that
//!   act on the whole machine are refused when checked against the initial user namespace
//!   (`capable`, beside the namespace program of [`crate::ns`]).
//! - Raw devices: no block device is opened for writing (`file_open`).
//! - Raw sockets: no `AF_PACKET` socket unless the policy's `[network]` allows raw sockets, and
//!   no raw inet socket under a policy without `[network]` (under one, the cgroup `sock_create`
//!   hook decides them by the `raw` switch) (`socket_create`).
//!
//! Each program makes its cheap checks on the hook's arguments first and passes the gate (a
//! cgroup walk) only for what it would deny. Every hook exists, with these arguments, on 6.1
//! and 6.12.

use core::ptr::{addr_of_mut, read_volatile};

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
    EbpfContext as _,
};
use oxd_common::{action, fmode, governs, mode, op, proto, reason, RULE_DEFAULT};

use crate::{
    confine::Gate,
    event::{count_denied, start_event, Verdict, EPERM},
    guard::{deny, gate},
    maps::PROTECTED,
    offsets,
};

/// Offset of `level` in `struct user_namespace` (0 for the initial namespace).
#[no_mangle]
static USER_NS_LEVEL_OFFSET: u32 = 0;

/// Offset of `i_mode` in `struct inode`.
#[no_mangle]
static INODE_I_MODE_OFFSET: u32 = 0;

/// Offset of `i_rdev` in `struct inode`.
#[no_mangle]
static INODE_I_RDEV_OFFSET: u32 = 0;

/// A load-time offset. Volatile, so the compiler cannot fold the 0 it was compiled with.
#[inline(always)]
fn offset(global: &'static u32) -> usize {
    // SAFETY: a plain read of one of our own statics.
    unsafe { read_volatile(global) as usize }
}

/// `PTRACE_MODE_NOAUDIT`: an access check the kernel makes without auditing (`/proc/PID/stat`
/// fields, ...): denied, not recorded.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// `CAP_OPT_NOAUDIT`: a capability probe the kernel does not audit.
const CAP_OPT_NOAUDIT: u32 = 0x2;

/// The capabilities refused against the initial user namespace, as a bit mask by number:
/// `CAP_NET_ADMIN` (12), `CAP_SYS_MODULE` (16), `CAP_SYS_RAWIO` (17), `CAP_SYS_BOOT` (22),
/// `CAP_SYS_TIME` (25), `CAP_MKNOD` (27), `CAP_AUDIT_CONTROL` (30), `CAP_MAC_OVERRIDE` (32),
/// `CAP_MAC_ADMIN` (33), `CAP_PERFMON` (38), `CAP_BPF` (39).
const MACHINE_CAPS: u64 = 1 << 12
    | 1 << 16
    | 1 << 17
    | 1 << 22
    | 1 << 25
    | 1 << 27
    | 1 << 30
    | 1 << 32
    | 1 << 33
    | 1 << 38
    | 1 << 39;

/// `READING_FIRMWARE` / `LOADING_FIRMWARE` (the same number in both enums, 6.1 and 6.12).
const FIRMWARE: u32 = 1;

/// `S_IFMT` and `S_IFBLK`.
const S_IFMT: u16 = 0o170_000;
const S_IFBLK: u16 = 0o060_000;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const SOCK_RAW: u32 = 3;

/// What `op::SCHED`'s `detail` names.
const SETNICE: u32 = 1;
const SETIOPRIO: u32 = 2;
const SETSCHEDULER: u32 = 3;
const MOVEMEMORY: u32 = 4;

// oxd's own processes

/// Whether `task` (a `struct task_struct *`) belongs to one of oxd's processes. A task whose
/// thread-group id cannot be read counts as oxd's (fail closed; only confined tasks ask).
#[inline(always)]
fn protected(task: u64) -> (bool, u32) {
    let tgid = offsets::task_tgid(task);
    // SAFETY: the key and value are plain integers.
    (tgid == 0 || unsafe { PROTECTED.get(tgid) }.is_some(), tgid)
}

/// Denies `op` on `task` to a confined task if `task` is oxd's (recorded unless `quiet`).
#[inline(always)]
fn decide_on_oxd(task: u64, op: u32, detail: u32, quiet: bool) -> i32 {
    let (is_oxd, tgid) = protected(task);
    if !is_oxd {
        return 0;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    if quiet {
        count_denied();
        return -EPERM;
    }
    deny(&gate, op, detail, tgid)
}

/// A signal to one of oxd's processes (BPF-LSM `task_kill`): `kill`, `tgkill`,
/// `pidfd_send_signal`, `rt_sigqueueinfo`, signals to a process group it is in. Signal 0 (an
/// existence probe) and signals the kernel sends with other credentials are left alone.
/// Runs first in `ipc::task_kill`.
#[inline(always)]
pub(crate) fn task_kill(ctx: &LsmContext) -> i32 {
    // int task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //               const struct cred *cred), then the previous LSM's verdict.
    let sig: i32 = ctx.arg(2);
    // Read as a plain number (see `ipc::task_kill`: the verifier takes a pointer argument for
    // non-NULL).
    // SAFETY: reading the fourth argument slot of our own context.
    let cred: u64 =
        unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().add(3)) }.unwrap_or(0);
    if sig == 0 || cred != 0 {
        return 0;
    }
    decide_on_oxd(ctx.arg(0), op::SIGNAL, sig as u32, false)
}

/// Ptrace access to one of oxd's processes (BPF-LSM `ptrace_access_check`), whatever the mode.
/// Checks the kernel makes without auditing are denied but not recorded.
/// Runs first in `ipc::ptrace_access_check`.
#[inline(always)]
pub(crate) fn ptrace(ctx: &LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode), then the previous
    // LSM's verdict.
    let mode: u32 = ctx.arg(1);
    decide_on_oxd(
        ctx.arg(0),
        op::PTRACE,
        mode,
        mode & PTRACE_MODE_NOAUDIT != 0,
    )
}

/// `setpriority` on one of oxd's processes (BPF-LSM `task_setnice`).
#[lsm(hook = "task_setnice")]
fn oxd_setnice(ctx: LsmContext) -> i32 {
    // int task_setnice(struct task_struct *p, int nice), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    decide_on_oxd(ctx.arg(0), op::SCHED, SETNICE, false)
}

/// `ioprio_set` on one of oxd's processes (BPF-LSM `task_setioprio`).
#[lsm(hook = "task_setioprio")]
fn oxd_setioprio(ctx: LsmContext) -> i32 {
    // int task_setioprio(struct task_struct *p, int ioprio), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    decide_on_oxd(ctx.arg(0), op::SCHED, SETIOPRIO, false)
}

/// `sched_setscheduler`, `sched_setparam`, `sched_setattr`, `sched_setaffinity` on one of oxd's
/// processes (BPF-LSM `task_setscheduler`).
#[lsm(hook = "task_setscheduler")]
fn oxd_setscheduler(ctx: LsmContext) -> i32 {
    // int task_setscheduler(struct task_struct *p), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide_on_oxd(ctx.arg(0), op::SCHED, SETSCHEDULER, false)
}

/// `migrate_pages`/`move_pages` of one of oxd's processes (BPF-LSM `task_movememory`).
#[lsm(hook = "task_movememory")]
fn oxd_movememory(ctx: LsmContext) -> i32 {
    // int task_movememory(struct task_struct *p), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide_on_oxd(ctx.arg(0), op::SCHED, MOVEMEMORY, false)
}

// the kernel

/// Denies a load of `id` (a `kernel_read_file_id`/`kernel_load_data_id`) other than firmware.
#[inline(always)]
fn decide_kernel_load(id: u32) -> i32 {
    if id == FIRMWARE {
        return 0;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    deny(&gate, op::KERNEL_LOAD, id, 0)
}

/// A file read into the kernel (BPF-LSM `kernel_read_file`): `finit_module`,
/// `kexec_file_load`, an IMA policy or certificate named by path.
#[lsm(hook = "kernel_read_file")]
fn kernel_read_file(ctx: LsmContext) -> i32 {
    // int kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents),
    // then the previous LSM's verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    decide_kernel_load(ctx.arg(1))
}

/// A buffer loaded into the kernel (BPF-LSM `kernel_load_data`): `init_module`, `kexec_load`,
/// an IMA policy written whole.
#[lsm(hook = "kernel_load_data")]
fn kernel_load_data(ctx: LsmContext) -> i32 {
    // int kernel_load_data(enum kernel_load_data_id id, bool contents), then the previous
    // LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    decide_kernel_load(ctx.arg(0))
}

/// Module autoloading on a confined task's behalf (BPF-LSM `kernel_module_request`): a socket
/// of an unloaded family, a device node without its driver, ... Recorded with the module name.
#[lsm(hook = "kernel_module_request")]
fn kernel_module_request(ctx: LsmContext) -> i32 {
    // int kernel_module_request(char *kmod_name), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    let name: *const u8 = ctx.arg(0);
    let verdict = Verdict::deny(reason::GUARD);
    if let Some(mut entry) = start_event(op::MODULE_REQUEST, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted; the copy is bounded by its path buffer.
        unsafe {
            (*event).mode = mode::ENFORCE;
            let dst = &mut *addr_of_mut!((*event).path);
            if let Ok(copied) = bpf_probe_read_kernel_str_bytes(name, dst) {
                (*event).path_len = copied.len() as u32 + 1;
            }
        }
        entry.submit(0);
    }
    count_denied();
    -EPERM
}

/// `user_ns->level`: 0 for the initial user namespace, and when it cannot be read (fail
/// closed).
#[inline(always)]
fn user_ns_level(ns: u64) -> u32 {
    if ns == 0 {
        return 0;
    }
    let at = ns.wrapping_add(offset(&USER_NS_LEVEL_OFFSET) as u64) as *const u32;
    // SAFETY: `bpf_probe_read_kernel` checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0)
}

/// A capability that acts on the whole machine, checked against the initial user namespace
/// (BPF-LSM `capable`, after the capability module granted it): see [`MACHINE_CAPS`]. No LSM
/// hook decides `delete_module`, `reboot`, `iopl`/`ioperm`, `settimeofday`, a netlink route or
/// firewall change, or opening `/dev/mem`, `/dev/port`, `/proc/kcore`: each checks one of
/// these capabilities, which a root agent has. Checks the kernel makes without auditing are
/// denied but not recorded (some run on every `/proc` read).
#[lsm(hook = "capable")]
fn kernel_capable(ctx: LsmContext) -> i32 {
    // int capable(const struct cred *cred, struct user_namespace *ns, int cap,
    //             unsigned int opts), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let cap: i32 = ctx.arg(2);
    if !(0..64).contains(&cap) || MACHINE_CAPS & (1u64 << cap) == 0 {
        return 0;
    }
    if user_ns_level(ctx.arg(1)) != 0 {
        return 0;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    let opts: u32 = ctx.arg(3);
    if opts & CAP_OPT_NOAUDIT != 0 {
        count_denied();
        return -EPERM;
    }
    deny(&gate, op::CAPABILITY, cap as u32, 0)
}

// raw devices

/// Opening a block device for writing (BPF-LSM `file_open`, in `file::file_open`): a raw
/// write to a disk changes files no path rule sees. Runs before the driver's `open`, so the
/// refusal does not depend on the device existing.
#[inline(always)]
pub(crate) fn block_device_write(ctx: &LsmContext) -> i32 {
    // int file_open(struct file *file), then the previous LSM's verdict.
    let file: *const u8 = ctx.arg(0);
    if offsets::file_mode(file) & fmode::WRITE == 0 {
        return 0;
    }
    let inode = offsets::file_inode(file);
    // Unreadable: not a block device as far as this check can tell (the open itself is then
    // decided by the policy's rules, as any open).
    let (Some(i_mode), Some(rdev)) = (
        offsets::read_at::<u16>(inode, &INODE_I_MODE_OFFSET),
        offsets::read_at::<u32>(inode, &INODE_I_RDEV_OFFSET),
    ) else {
        return 0;
    };
    if i_mode & S_IFMT != S_IFBLK {
        return 0;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    deny(&gate, op::DEVICE_WRITE, rdev, 0)
}

// raw sockets

/// Creating a packet socket, or a raw inet socket under a policy that does not govern the
/// network (BPF-LSM `socket_create`): both send frames no cgroup hook judges. A packet socket
/// is allowed only when the policy's `[network]` allows raw sockets (`raw`, or a default that
/// allows); a raw inet socket under a `[network]` policy is left to the cgroup `sock_create`
/// hook (`crate::sock`), which decides it by the same switch. Sockets the kernel makes for
/// itself are left alone.
#[lsm(hook = "socket_create")]
fn raw_socket_create(ctx: LsmContext) -> i32 {
    // int socket_create(int family, int type, int protocol, int kern), then the previous
    // LSM's verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: u32 = ctx.arg(0);
    let sock_type: u32 = ctx.arg(1);
    let protocol: u32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let packet = family == AF_PACKET;
    let raw_inet = (family == AF_INET || family == AF_INET6) && sock_type == SOCK_RAW;
    if !packet && !raw_inet {
        return 0;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    let network = gate.configured && gate.config.governs & governs::NETWORK != 0;
    if network && (raw_inet || gate.config.net_raw == action::ALLOW) {
        return 0;
    }
    let verdict = if !gate.configured {
        Verdict::deny(gate.missing_reason())
    } else if network && gate.config.net_raw_rule != RULE_DEFAULT {
        Verdict {
            decision: action::DENY,
            reason: reason::RULE,
            rule_id: gate.config.net_raw_rule,
        }
    } else {
        Verdict::deny(reason::GUARD)
    };
    deny_socket(&gate, &verdict, family, sock_type, protocol)
}

/// Records the denial of a socket (as `op::SOCKET`, enforced) and returns the refusal.
#[inline(always)]
fn deny_socket(gate: &Gate, verdict: &Verdict, family: u32, sock_type: u32, protocol: u32) -> i32 {
    if let Some(mut entry) = start_event(op::SOCKET, gate, verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).mode = mode::ENFORCE;
            (*event).proto = proto::RAW;
            (*event).detail =
                (family & 0xff) << 24 | (sock_type & 0xff) << 16 | (protocol & 0xffff);
        }
        entry.submit(0);
    }
    count_denied();
    -EPERM
}
