//! Namespaces, mounts and chroot (`[process] namespaces`): whatever would make a path mean
//! something else than it means in the host's view, where exec and file rules judge it.
//!
//! While the policy denies namespaces (the default), a confined task cannot create a user
//! namespace (`userns_create`), mount, remount or bind anything (`sb_mount`), unmount
//! (`sb_umount`), attach a mount made with the new mount API (`move_mount`), pivot its root
//! (`sb_pivotroot`) or chroot (`path_chroot`); it cannot use a capability in a user namespace
//! other than its own, nor `CAP_SYS_CHROOT` (`capable`: how `setns` into an existing user or
//! mount namespace is checked); and it cannot open or execute a file that lives in another
//! mount namespace, as reached through `/proc/PID/root` of a process in one (`file::file_open` on
//! `file_open`, `ns_exec_check` on `bprm_check_security`).
//!
//! Each hook passes the gate with `governs::PROCESS`, which every policy sets. The switch's
//! verdict is the policy's `namespaces` action, named by its rule id; a slot without a
//! configuration fails closed. The mount operations are recorded whether
//! allowed or denied; `capable` and the foreign-mount checks only when they deny (they run on
//! every capability check and every open).

use aya_ebpf::{bindings::path, helpers::bpf_d_path, macros::lsm, programs::LsmContext};
use oxd_common::{access, action, fmode, governs, op, reason, PATH_BUF_LEN};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    maps::SCRATCH,
    offsets,
};

/// `CAP_SYS_CHROOT`: checked by `chroot` and by `setns` into a mount namespace.
const CAP_SYS_CHROOT: i32 = 18;

/// `MNT_NS_INTERNAL` (`ERR_PTR(-EINVAL)`): the namespace of the kernel's internal mounts
/// (pipes, sockets, memfds, nsfs, overlayfs's private layer clones).
const MNT_NS_INTERNAL: u64 = (-22_i64) as u64;

/// The switch's verdict for a confined task (fail closed without a configuration).
#[inline(always)]
fn switch_verdict(gate: &Gate) -> Verdict {
    if !gate.configured {
        return Verdict::deny(gate.missing_reason());
    }
    Verdict {
        decision: gate.config.namespaces,
        reason: reason::RULE,
        rule_id: gate.config.namespaces_rule,
    }
}

/// Decides and records `op` (with `detail`) by the switch; the hook's return value.
#[inline(always)]
fn decide(op: u32, detail: u32) -> i32 {
    let gate = Gate::open(governs::PROCESS);
    if !gate.decide {
        return 0;
    }
    let verdict = switch_verdict(&gate);
    if let Some(mut entry) = start_event(op, &gate, &verdict) {
        // SAFETY: the event is ours until submitted.
        unsafe { (*entry.as_mut_ptr()).detail = detail };
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Creating a user namespace (BPF-LSM `userns_create`, kernel 6.1+): the door to every other
/// namespace and to mounting without privileges.
#[lsm(hook = "userns_create")]
fn userns_create(ctx: LsmContext) -> i32 {
    // int userns_create(const struct cred *cred), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide(op::USERNS_CREATE, 0)
}

/// Every `mount(2)`: a new mount, a bind mount, a move, a remount, a propagation change (BPF-LSM
/// `sb_mount`). Recorded with the mount point's path and the flags.
#[lsm(hook = "sb_mount")]
fn sb_mount(ctx: LsmContext) -> i32 {
    // int sb_mount(const char *dev_name, const struct path *path, const char *type,
    //              unsigned long flags, void *data), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let gate = Gate::open(governs::PROCESS);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let mount_point: *mut path = ctx.arg(1);
    let flags: u64 = ctx.arg(3);
    let verdict = switch_verdict(&gate);
    // The mount point, in the caller's view (what it is about to change), for the record only.
    // SAFETY: a BTF-typed `struct path *` argument; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe {
        bpf_d_path(
            mount_point,
            (*scratch).event.path.as_mut_ptr().cast(),
            PATH_BUF_LEN as u32,
        )
    };
    let path_len = if len > 0 { len as u32 } else { 0 };
    if let Some(mut entry) = start_event(op::MOUNT, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe { (*event).detail = flags as u32 };
        record_path(event, path_len);
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// `umount2(2)` (BPF-LSM `sb_umount`): uncovering what a mount hid is a change of view too.
#[lsm(hook = "sb_umount")]
fn sb_umount(ctx: LsmContext) -> i32 {
    // int sb_umount(struct vfsmount *mnt, int flags), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let flags: u32 = ctx.arg(1);
    decide(op::UMOUNT, flags)
}

/// `move_mount(2)` (BPF-LSM `move_mount`): how the new mount API (`fsopen`/`fsmount`,
/// `open_tree`) attaches a mount, which `sb_mount` never sees.
#[lsm(hook = "move_mount")]
fn move_mount(ctx: LsmContext) -> i32 {
    // int move_mount(const struct path *from_path, const struct path *to_path), then the
    // previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    decide(op::MOVE_MOUNT, 0)
}

/// `pivot_root(2)` (BPF-LSM `sb_pivotroot`).
#[lsm(hook = "sb_pivotroot")]
fn sb_pivotroot(ctx: LsmContext) -> i32 {
    // int sb_pivotroot(const struct path *old_path, const struct path *new_path), then the
    // previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    decide(op::PIVOT_ROOT, 0)
}

/// `chroot(2)` (BPF-LSM `path_chroot`, needs `CONFIG_SECURITY_PATH`).
#[lsm(hook = "path_chroot")]
fn path_chroot(ctx: LsmContext) -> i32 {
    // int path_chroot(const struct path *path), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide(op::CHROOT, 0)
}

/// A capability checked against a user namespace other than the credential's own, or
/// `CAP_SYS_CHROOT` (BPF-LSM `capable`, after the capability module granted it). There is no
/// LSM hook for `setns`, but entering a user namespace checks `CAP_SYS_ADMIN` in it, and
/// entering a mount namespace checks `CAP_SYS_ADMIN` in the namespace's owner and
/// `CAP_SYS_CHROOT` in the caller's: denying these stops `setns` (by pidfd or by
/// `/proc/PID/ns/*`) into namespaces made by an unconfined process of the same user, and a root
/// agent's `setns` into any mount namespace. A confined task has no user namespace of its own
/// below its credentials' (it cannot create one), so nothing else it does needs such a
/// capability. Only denials are recorded: this hook runs on every capability check.
#[lsm(hook = "capable")]
fn capable(ctx: LsmContext) -> i32 {
    // int capable(const struct cred *cred, struct user_namespace *ns, int cap,
    //             unsigned int opts), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let cred: *const u8 = ctx.arg(0);
    let ns: *const u8 = ctx.arg(1);
    let cap: i32 = ctx.arg(2);
    if cap != CAP_SYS_CHROOT && ns == offsets::cred_user_ns(cred) {
        return 0;
    }
    let gate = Gate::open(governs::PROCESS);
    if !gate.decide {
        return 0;
    }
    let verdict = switch_verdict(&gate);
    if verdict.decision != action::DENY {
        return 0;
    }
    if let Some(mut entry) = start_event(op::CAPABLE, &gate, &verdict) {
        // SAFETY: the event is ours until submitted.
        unsafe { (*entry.as_mut_ptr()).detail = cap as u32 };
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Whether `file` lives on a mount of another mount namespace than the current task's: one
/// reached through `/proc/PID/root` (or `cwd`, or a directory fd) of a process in another
/// namespace, where the path `bpf_d_path` gives is that namespace's, not the host's. The
/// kernel's internal mounts belong to no namespace and are not foreign.
#[inline(always)]
fn foreign(file: *const u8) -> bool {
    let file_ns = offsets::file_mnt_ns(file);
    if file_ns == 0 || file_ns == MNT_NS_INTERNAL {
        return false;
    }
    file_ns != offsets::current_mnt_ns()
}

/// Decides an open or exec of a file in another mount namespace: denied (and recorded, as
/// `op` with `access`) while the policy denies namespaces.
#[inline(always)]
fn decide_foreign(op: u32, wanted: u32, file: *const u8) -> i32 {
    // Foreign files are rare and the check is cheaper than the gate's cgroup walk: first.
    if !foreign(file) {
        return 0;
    }
    let gate = Gate::open(governs::PROCESS);
    // Without a configuration the file and exec hooks already fail closed, and record it.
    if !gate.decide || !gate.configured || gate.config.namespaces != action::DENY {
        return 0;
    }
    let mut verdict = switch_verdict(&gate);
    verdict.reason = reason::FOREIGN_MOUNT_NS;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    // SAFETY: `file_path` is a BTF-checked `struct path *`; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe {
        bpf_d_path(
            offsets::file_path(file),
            (*scratch).event.path.as_mut_ptr().cast(),
            PATH_BUF_LEN as u32,
        )
    };
    let path_len = if len > 0 { len as u32 } else { 0 };
    if let Some(mut entry) = start_event(op, &gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe { (*event).access = wanted };
        record_path(event, path_len);
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Opens of files in another mount namespace (BPF-LSM `file_open`: runs in `file::file_open`,
/// before the file rules).
#[inline(always)]
pub(crate) fn foreign_open(ctx: &LsmContext) -> i32 {
    // int file_open(struct file *file), then the previous LSM's verdict.
    let file: *const u8 = ctx.arg(0);
    let f_mode = offsets::file_mode(file);
    // The kernel opening a file to execute it: `ns_exec_check` decides that, as an exec.
    if f_mode & fmode::EXEC != 0 || offsets::file_flags(file) & fmode::EXEC_OPEN_FLAG != 0 {
        return 0;
    }
    let mut wanted = 0;
    if f_mode & fmode::WRITE != 0 {
        wanted |= access::WRITE;
    }
    if f_mode & fmode::READ != 0 || wanted == 0 {
        wanted |= access::READ;
    }
    decide_foreign(op::OPEN, wanted, file)
}

/// Execs of files in another mount namespace (BPF-LSM `bprm_check_security`, beside
/// `exec::exec_check`).
#[lsm(hook = "bprm_check_security")]
fn ns_exec_check(ctx: LsmContext) -> i32 {
    // int bprm_check_security(struct linux_binprm *bprm), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let file = offsets::bprm_file(ctx.arg(0));
    decide_foreign(op::EXEC, 0, file)
}
