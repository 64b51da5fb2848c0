//! Acting through someone else: a confined task may not act on a task outside its confinement
//! (ptrace and everything ptrace's access check guards, `PTRACE_TRACEME` under an outside
//! tracer, signals), may not push input into a terminal (`TIOCSTI`, `TIOCLINUX`), and reaches
//! Unix sockets outside its confinement only as the policy's `[ipc]` section allows.
//!
//! "Inside" means: the other task's cgroup (for a socket, the cgroup of the task that created
//! it) has the same nearest confined ancestor-or-self as the acting task's cgroup, i.e. both
//! are under the same confinement and no nested confinement separates them. The other party's
//! cgroup is read from the kernel's structs (`task->cgroups->dfl_cgrp`,
//! `sk->sk_cgrp_data.cgroup`) and walked up through `cgroup->self.parent`, which is the same on
//! every kernel oxd supports; whatever cannot be read fails closed.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_loop,
        bpf_probe_read_kernel, generated as gen,
    },
    macros::lsm,
    programs::LsmContext,
    EbpfContext as _,
};
use oxd_common::{action, governs, op, reason, MAX_CGROUP_DEPTH, PATH_BUF_LEN, RULE_DEFAULT};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    guard_kernel,
    maps::{CONFINED, SCRATCH},
    offsets, sigio, unix,
};

/// `TIOCSTI`: push a byte into a terminal's input queue.
const TIOCSTI: u32 = 0x5412;
/// `TIOCLINUX`: the Linux console's multiplexer (its selection paste pushes input too).
const TIOCLINUX: u32 = 0x541C;

/// Longest `sun_path` of a Unix socket address.
const SUN_PATH_LEN: i32 = 108;
/// Bytes of `sun_family` before `sun_path`.
const SUN_FAMILY_LEN: i32 = 2;

/// Where the other party of an operation stands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Inside,
    Outside,
    /// Its cgroup could not be read: fail closed.
    Unknown,
}

/// The id of the nearest confined cgroup at or above the current task's cgroup, 0 if none.
/// Walked as [`crate::confine`] walks it, so it finds the confinement the gate found.
#[inline(always)]
fn own_confinement() -> u64 {
    // SAFETY: helper calls without pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the key and value are plain integers.
    if unsafe { CONFINED.get(cgroup_id) }.is_some() {
        return cgroup_id;
    }
    let mut search = AncestorSearch {
        cgroup_id,
        found: 0,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = ancestor_step;
    // SAFETY: `search` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe {
        bpf_loop(
            MAX_CGROUP_DEPTH as u32 - 1,
            step as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    if ret < 0 {
        return 0;
    }
    search.found
}

/// What [`ancestor_step`] needs from the last step, on the caller's stack.
#[repr(C)]
struct AncestorSearch {
    cgroup_id: u64,
    /// The deepest confined ancestor so far, 0 if none.
    found: u64,
}

/// One level of [`own_confinement`]'s walk, from the top level (1, just below the root) down:
/// 1 to stop (at the task's own cgroup), 0 to go on.
#[inline(never)]
extern "C" fn ancestor_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `AncestorSearch` that `own_confinement` passed to `bpf_loop`.
    let search = unsafe { &mut *ctx.cast::<AncestorSearch>() };
    // SAFETY: helper call without pointer arguments.
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(index as i32 + 1) };
    if ancestor == 0 || ancestor == search.cgroup_id {
        return 1;
    }
    // SAFETY: the key and value are plain integers.
    if unsafe { CONFINED.get(ancestor) }.is_some() {
        search.found = ancestor;
    }
    0
}

/// `Side` as [`side_step`] stores it.
const SIDE_INSIDE: u64 = 1;
const SIDE_OUTSIDE: u64 = 2;
const SIDE_UNKNOWN: u64 = 3;

/// What [`side_step`] needs from the last step, on the caller's stack.
#[repr(C)]
struct SideSearch {
    /// The cgroup to look at next.
    at: u64,
    /// The current task's confinement.
    own: u64,
    /// 0 while climbing, else a `SIDE_*` value.
    side: u64,
}

/// Where `cgroup` (the address of a `struct cgroup`, 0 if it could not be read) stands
/// relative to the current task's confinement: walks up from it to its nearest confined
/// ancestor-or-self and compares that with the current task's. One level per `bpf_loop`
/// iteration, so the verifier checks a level once, not once per depth.
#[inline(always)]
pub(crate) fn side_of(cgroup: u64) -> Side {
    let own = own_confinement();
    if own == 0 || cgroup == 0 {
        return Side::Unknown;
    }
    let mut search = SideSearch {
        at: cgroup,
        own,
        side: 0,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = side_step;
    // SAFETY: `search` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe {
        bpf_loop(
            MAX_CGROUP_DEPTH as u32 + 1,
            step as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    match search.side {
        _ if ret < 0 => Side::Unknown,
        SIDE_INSIDE => Side::Inside,
        SIDE_OUTSIDE => Side::Outside,
        // Unreadable, or deeper than any confinement is recognised: fail closed.
        _ => Side::Unknown,
    }
}

/// One level of [`side_of`]'s climb: 1 to stop (the side found), 0 to go on.
#[inline(never)]
extern "C" fn side_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `SideSearch` that `side_of` passed to `bpf_loop`.
    let search = unsafe { &mut *ctx.cast::<SideSearch>() };
    let at = search.at;
    let Some(id) = offsets::cgroup_id(at) else {
        search.side = SIDE_UNKNOWN;
        return 1;
    };
    // SAFETY: the key and value are plain integers.
    if unsafe { CONFINED.get(id) }.is_some() {
        search.side = if id == search.own {
            SIDE_INSIDE
        } else {
            SIDE_OUTSIDE
        };
        return 1;
    }
    match offsets::cgroup_parent(at) {
        // Above the root: no confinement at all.
        Some(0) => {
            search.side = SIDE_OUTSIDE;
            1
        }
        Some(parent) => {
            search.at = parent;
            0
        }
        None => {
            search.side = SIDE_UNKNOWN;
            1
        }
    }
}

/// The verdict on acting on a party that stands at `side`: inside is allowed; outside gets
/// `outside` (an [`action`]) with `outside_reason`; unknown is denied.
#[inline(always)]
fn verdict_for(gate: &Gate, side: Side, outside: u32, outside_reason: u32) -> Verdict {
    if !gate.configured {
        return Verdict::deny(gate.missing_reason());
    }
    match side {
        Side::Inside => Verdict {
            decision: action::ALLOW,
            reason: reason::IPC_INSIDE,
            rule_id: RULE_DEFAULT,
        },
        Side::Outside => Verdict {
            decision: outside,
            reason: outside_reason,
            rule_id: RULE_DEFAULT,
        },
        Side::Unknown => Verdict::deny(reason::IPC_PEER_UNKNOWN),
    }
}

/// Records the decision about a task, with the op's `detail`, and returns the hook's verdict.
#[inline(always)]
fn decide_on_task(gate: &Gate, op: u32, task: u64, detail: u32) -> i32 {
    let side = match offsets::task_cgroup(task) {
        Some(cgroup) => side_of(cgroup),
        None => Side::Unknown,
    };
    let verdict = verdict_for(gate, side, action::DENY, reason::IPC_OUTSIDE);
    if let Some(mut entry) = start_event(op, gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).detail = detail;
            (*event).peer_pid = offsets::task_tgid(task);
        }
        entry.submit(0);
    }
    if refuse(&verdict, gate) {
        return -EPERM;
    }
    0
}

/// A confined task's ptrace access to another task (BPF-LSM `ptrace_access_check`), whatever
/// the mode: attach, `process_vm_readv`/`writev`, `pidfd_getfd`, `/proc/PID/mem`, and the
/// `/proc/PID` files guarded by `PTRACE_MODE_READ`. The kernel does not ask for the task's own
/// threads.
#[lsm(hook = "ptrace_access_check")]
fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode), then the previous
    // LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // oxd's own processes first, whatever the policy.
    let guarded = guard_kernel::ptrace(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let child: u64 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    decide_on_task(&gate, op::PTRACE, child, mode)
}

/// `PTRACE_TRACEME` by a confined task (BPF-LSM `ptrace_traceme`): its parent would become its
/// tracer, so the parent must be inside.
#[lsm(hook = "ptrace_traceme")]
fn ptrace_traceme(ctx: LsmContext) -> i32 {
    // int ptrace_traceme(struct task_struct *parent), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let parent: u64 = ctx.arg(0);
    decide_on_task(&gate, op::PTRACE, parent, 0)
}

/// A signal from a confined task to another task (BPF-LSM `task_kill`). Signal 0 (an existence
/// probe, nothing is delivered) is left alone, and so are signals the kernel sends on a task's
/// behalf with other credentials (`cred` set: USB asynchronous I/O completions).
#[lsm(hook = "task_kill")]
fn task_kill(ctx: LsmContext) -> i32 {
    // int task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //               const struct cred *cred), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // oxd's own processes first, whatever the policy.
    let guarded = guard_kernel::task_kill(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let sig: i32 = ctx.arg(2);
    // Read as a plain number: the verifier takes a pointer argument loaded from the context for
    // non-NULL, and would hard-wire `cred != 0` to true (every signal left alone).
    // SAFETY: reading the fourth argument slot of our own context.
    let cred: u64 =
        unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().add(3)) }.unwrap_or(0);
    if sig == 0 || cred != 0 {
        return 0;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let target: u64 = ctx.arg(0);
    decide_on_task(&gate, op::SIGNAL, target, sig as u32)
}

/// Pushing input into a terminal (BPF-LSM `file_ioctl`): `TIOCSTI` and `TIOCLINUX` are denied
/// to confined tasks on any file. Input typed into the caller's terminal would run, unconfined,
/// after the agent exits.
#[lsm(hook = "file_ioctl")]
fn tty_ioctl(ctx: LsmContext) -> i32 {
    // int file_ioctl(struct file *file, unsigned int cmd, unsigned long arg), then the previous
    // LSM's verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    decide_tty_ioctl(ctx.arg(1))
}

/// The same for 32-bit callers (BPF-LSM `file_ioctl_compat`, kernels from 6.8; before that the
/// compat path calls `file_ioctl`).
#[lsm(hook = "file_ioctl_compat")]
fn tty_ioctl_compat(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    decide_tty_ioctl(ctx.arg(1))
}

#[inline(always)]
fn decide_tty_ioctl(cmd: u32) -> i32 {
    if cmd == sigio::FIOSETOWN || cmd == sigio::SIOCSPGRP || cmd == sigio::FIOASYNC {
        return sigio::decide_ioctl(cmd);
    }
    if cmd != TIOCSTI && cmd != TIOCLINUX {
        return 0;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let verdict = if gate.configured {
        Verdict::deny(reason::TTY_INJECT)
    } else {
        Verdict::deny(gate.missing_reason())
    };
    if let Some(mut entry) = start_event(op::TTY_INJECT, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe { (*event).detail = cmd };
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// `connect` on a Unix stream or seqpacket socket (BPF-LSM `unix_stream_connect`), to the
/// listening socket `other`.
#[lsm(hook = "unix_stream_connect")]
fn unix_stream_connect(ctx: LsmContext) -> i32 {
    // int unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk), then
    // the previous LSM's verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    decide_unix(&gate, op::UNIX_CONNECT, ctx.arg(1))
}

/// `connect` or a send on a Unix datagram socket (BPF-LSM `unix_may_send`), to the socket
/// `other`.
#[lsm(hook = "unix_may_send")]
fn unix_may_send(ctx: LsmContext) -> i32 {
    // int unix_may_send(struct socket *sock, struct socket *other), then the previous LSM's
    // verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let gate = Gate::open(governs::IPC);
    if !gate.decide {
        return 0;
    }
    let other: u64 = ctx.arg(1);
    decide_unix(&gate, op::UNIX_SEND, offsets::socket_sk(other).unwrap_or(0))
}

/// The decision on reaching the Unix socket `sk` (a `struct sock *`, 0 if unreadable): inside
/// the confinement allowed, outside as the policy's `[ipc]` socket rules say ([`crate::unix`]).
#[inline(always)]
fn decide_unix(gate: &Gate, op: u32, sk: u64) -> i32 {
    let side = match offsets::sock_cgroup(sk) {
        Some(cgroup) => side_of(cgroup),
        None => Side::Unknown,
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let judged = if gate.configured && side == Side::Outside {
        unix::judge(gate, sk, scratch)
    } else {
        unix::Judged {
            verdict: verdict_for(gate, side, action::DENY, reason::DEFAULT),
            resolved_len: 0,
        }
    };
    let verdict = judged.verdict;
    if let Some(mut entry) = start_event(op, gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted; the copy is bounded by `sun_path`'s size,
        // within the event's path buffer.
        unsafe {
            (*event).peer_pid = offsets::sock_peer_pid(sk);
        }
        if judged.resolved_len != 0 {
            record_path(event, judged.resolved_len);
        } else {
            // SAFETY: as above.
            unsafe {
                let addr = offsets::unix_address(sk);
                if let Some((len, name)) = offsets::unix_address_name(addr) {
                    let mut n = len - SUN_FAMILY_LEN;
                    if n > SUN_PATH_LEN {
                        n = SUN_PATH_LEN;
                    }
                    if n > 0 && (n as usize) < PATH_BUF_LEN {
                        let dst = core::ptr::addr_of_mut!((*event).path).cast::<u8>();
                        let src = (name + SUN_FAMILY_LEN as u64) as *const c_void;
                        if gen::bpf_probe_read_kernel(dst.cast(), n as u32, src) == 0 {
                            (*event).path_len = n as u32;
                        }
                    }
                }
            }
        }
        entry.submit(0);
    }
    if refuse(&verdict, gate) {
        return -EPERM;
    }
    0
}
