//! Changes the kernel hands to its LSM hooks as a dentry without a mount: setting and removing
//! extended attributes (`inode_setxattr`, `inode_removexattr`; POSIX ACLs from 6.2 through
//! `inode_set_acl`, `inode_remove_acl`) and changing a file's times (`inode_setattr`). Each is
//! a write to the file, decided by the file write rules like the `path_*` hooks of
//! [`crate::write`].
//!
//! A dentry names a file inside its file system, not a path: the same file system can be
//! mounted (or bind-mounted) at several places, and the caller's mount is not passed (the
//! syscalls hold it, the hooks are not given it; `bpf_d_path` needs a `struct path` and is not
//! allowed in these hooks anyway). So the file is judged through every mount that can reach it:
//! the mounts of its super block (`sb->s_mounts`) that belong to the current task's mount
//! namespace and whose root is the dentry or one of its ancestors. For each, the path is built
//! as `d_path` builds it (`path::resolve_by_walk`) and judged; the change is allowed only if
//! every such path is allowed for writing, and denied (fail closed) if none is found, as when
//! the file is reached only through a mount of another namespace or a detached one. One
//! `bpf_loop` callback visits one mount, so the verifier checks the judgement of one path once,
//! whatever the number of mounts.
//!
//! Kernel-internal mounts (`MNT_NS_INTERNAL`: `kern_mount` file systems such as pipes, sockets
//! and memfds, and the private clones of an overlay's layers) are not in any namespace. A file
//! that only they reach is not named by any path: its changes are left alone. Overlayfs
//! changes the files of its layers (copy-up, `setattr`, its own `trusted.overlay.*` xattrs)
//! with its mounter's credentials in place of the task's, through such clones, after the change
//! to the overlay's own file was decided here on the overlay's path: a change made with
//! overridden credentials (`current->cred != current->real_cred`) to a file an internal mount
//! reaches is left alone too.

use core::{ffi::c_void, ptr::write_volatile};

use aya_ebpf::{
    helpers::bpf_loop,
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};
use oxd_common::{access, action, governs, op, reason};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    guard_files,
    maps::{FILE_WRITE_RULES, SCRATCH},
    offsets,
    path::{by_identity, denied_dentry, lookup_path, resolve_by_walk},
};

/// `MNT_NS_INTERNAL` (`ERR_PTR(-EINVAL)`): the namespace of the kernel's internal mounts.
const MNT_NS_INTERNAL: u64 = -22_i64 as u64;

/// Most mounts of one file system scanned (in every namespace); more fail closed.
const MAX_SB_MOUNTS: u32 = 4096;

/// Most names between a dentry and the root of its file system that the ancestry check climbs.
const MAX_DEPTH: u32 = 64;

/// `ATTR_*` bits of `struct iattr.ia_valid` (include/linux/fs.h, the same in 6.1 and 6.12).
const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
const ATTR_ATIME_SET: u32 = 1 << 7;
const ATTR_MTIME_SET: u32 = 1 << 8;
const ATTR_TIMES_SET: u32 = 1 << 16;
const ATTR_TOUCH: u32 = 1 << 17;

/// What a `setattr` changes that makes it a `utimes`.
const TIME_BITS: u32 =
    ATTR_ATIME | ATTR_MTIME | ATTR_ATIME_SET | ATTR_MTIME_SET | ATTR_TIMES_SET | ATTR_TOUCH;

/// What a `setattr` changes that the `path_*` hooks decide (`chmod`, `chown`, `truncate`).
const PATH_HOOK_BITS: u32 = ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE;

/// Decides setting an extended attribute, BPF-LSM `inode_setxattr`.
#[lsm(hook = "inode_setxattr")]
fn inode_setxattr(ctx: LsmContext) -> i32 {
    // int inode_setxattr(struct user_namespace *mnt_userns (6.1) | struct mnt_idmap *idmap
    //                    (6.12), struct dentry *dentry, const char *name, const void *value,
    //                    size_t size, int flags), then the previous verdict.
    let previous: i32 = ctx.arg(6);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::setxattr(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let flags: u64 = ctx.arg(5);
    change_dentry(ctx.arg(1), op::SETXATTR, flags as u32)
}

/// Decides removing an extended attribute, BPF-LSM `inode_removexattr`.
#[lsm(hook = "inode_removexattr")]
fn inode_removexattr(ctx: LsmContext) -> i32 {
    // int inode_removexattr(struct user_namespace * | struct mnt_idmap *, struct dentry *,
    //                       const char *name), then the previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::removexattr(&ctx);
    if guarded != 0 {
        return guarded;
    }
    change_dentry(ctx.arg(1), op::REMOVEXATTR, 0)
}

/// Decides setting a POSIX ACL (`setfacl`, `setxattr` of `system.posix_acl_*`), BPF-LSM
/// `inode_set_acl` (6.2+; 6.1 passes ACLs through `inode_setxattr`).
#[lsm(hook = "inode_set_acl")]
fn inode_set_acl(ctx: LsmContext) -> i32 {
    // int inode_set_acl(struct mnt_idmap *idmap, struct dentry *dentry, const char *acl_name,
    //                   struct posix_acl *kacl), then the previous verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    change_dentry(ctx.arg(1), op::SETXATTR, 0)
}

/// Decides removing a POSIX ACL, BPF-LSM `inode_remove_acl` (6.2+).
#[lsm(hook = "inode_remove_acl")]
fn inode_remove_acl(ctx: LsmContext) -> i32 {
    // int inode_remove_acl(struct mnt_idmap *idmap, struct dentry *dentry,
    //                      const char *acl_name), then the previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    change_dentry(ctx.arg(1), op::REMOVEXATTR, 0)
}

/// Decides changing a file's times (`utimes`, `utimensat`, `futimens`), BPF-LSM
/// `inode_setattr` on kernels whose hook takes a `struct mnt_idmap *` first (6.12; user space
/// attaches this program or [`inode_setattr_dentry`], by the hook's BTF). Other attribute
/// changes have `path_*` hooks (`chmod`, `chown`, `truncate`) or are the kernel's own (clearing
/// set-id bits on a write): left alone here.
#[lsm(hook = "inode_setattr")]
fn inode_setattr(ctx: LsmContext) -> i32 {
    // int inode_setattr(struct mnt_idmap *idmap, struct dentry *dentry, struct iattr *attr),
    // then the previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    change_times(ctx.arg(1), ctx.arg(2))
}

/// [`inode_setattr`] on kernels whose hook takes the dentry first (6.1). A program of its own:
/// one program reading either argument layout would be compiled into a ctx access at a
/// computed offset, which the verifier refuses.
#[lsm(hook = "inode_setattr")]
fn inode_setattr_dentry(ctx: LsmContext) -> i32 {
    // int inode_setattr(struct dentry *dentry, struct iattr *attr), then the previous verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    change_times(ctx.arg(0), ctx.arg(1))
}

/// A `setattr` of `dentry`: decided as `utimes` if it changes times only.
#[inline(always)]
fn change_times(dentry: *const u8, attr: *const u8) -> i32 {
    let valid = offsets::iattr_valid(attr);
    if valid & TIME_BITS == 0 || valid & PATH_HOOK_BITS != 0 {
        return 0;
    }
    change_dentry(dentry, op::UTIMES, valid)
}

/// A change to the file behind `dentry`: decided as a write on every path the agent's mount
/// namespace has to it, recorded as `op`.
#[inline(always)]
fn change_dentry(dentry: *const u8, op: u32, detail: u32) -> i32 {
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let decided = if gate.configured {
        match judge_dentry(&gate, dentry) {
            Some(decided) => decided,
            // Not a file any path names, or the kernel's own change to an overlay layer.
            None => return 0,
        }
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op, &gate, &decided, detail);
    if refuse(&decided.0, &gate) {
        return -EPERM;
    }
    0
}

/// What the scan of a file system's mounts has found so far, kept in a per-CPU map rather
/// than on the stack: the verifier does not track what map memory holds, so the callback's
/// state is the same after every iteration and it checks the callback once (values it tracked
/// on the stack, such as a count of paths judged, would differ after each iteration and make it
/// check the callback again and again).
#[repr(C)]
struct ScanResult {
    /// 1 once a path was judged (a mount of the namespace reaches the file).
    judged: u32,
    /// 1 if an internal mount reaches the file.
    internal: u32,
    /// 1 if the file system has mounts in other namespaces (or detached ones).
    foreign: u32,
    /// 1 once the whole list was visited.
    ended: u32,
    /// The verdict so far: 0 before any path, else the first deny or the last allow.
    decision: u32,
    reason: u32,
    rule_id: u32,
    /// The length of the path of [`Self::decision`] (in `scratch.event.path`).
    len: u32,
}

#[map]
static ATTR_SCAN: PerCpuArray<ScanResult> = PerCpuArray::with_max_entries(1, 0);

/// What [`scan_mount`] needs, the same in every iteration (but the cursor), on the stack.
#[repr(C)]
struct MountScan {
    /// The next mount to visit (a `struct mount *`), 0 past the last.
    mount: u64,
    /// `&sb->s_mounts` when it is a `list_head` (its end), else 0.
    head: u64,
    dentry: u64,
    /// The current task's mount namespace.
    ns: u64,
    slot: u32,
    write_default: u32,
    /// The exact write deny rule naming the file, or `RULE_NONE`.
    denied_rule: u32,
    /// 1: keep scanning after a denied path (to find an internal mount).
    overridden: u32,
}

/// The verdict on the file behind `dentry` and the length of the path to record, or `None`
/// to leave the change alone (see the module docs).
#[inline(always)]
fn judge_dentry(gate: &Gate, dentry: *const u8) -> Option<(Verdict, u32)> {
    let o = offsets::mount_scan_offsets();
    let Some(overridden) = offsets::creds_overridden() else {
        return Some((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    };
    let ns = offsets::current_mnt_ns();
    if ns == 0 {
        return Some((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    }
    let Some(found) = ATTR_SCAN.get_ptr_mut(0) else {
        return Some((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    };
    // SAFETY: our per-CPU map value; one field at a time (no memset for the verifier to walk).
    unsafe {
        write_volatile(&raw mut (*found).judged, 0);
        write_volatile(&raw mut (*found).internal, 0);
        write_volatile(&raw mut (*found).foreign, 0);
        write_volatile(&raw mut (*found).ended, 0);
        write_volatile(&raw mut (*found).decision, 0);
        write_volatile(&raw mut (*found).reason, 0);
        write_volatile(&raw mut (*found).rule_id, 0);
        write_volatile(&raw mut (*found).len, 0);
    }
    let denied = denied_dentry(dentry, gate.slot);
    let sb = offsets::dentry_sb(dentry);
    let list = sb + o.sb_mounts;
    let (head, first) = if o.is_list {
        let next = read_u64(list);
        (
            list,
            if next == list || next == 0 {
                0
            } else {
                next.wrapping_sub(o.sb_link)
            },
        )
    } else {
        (0, read_u64(list))
    };
    let mut state = MountScan {
        mount: first,
        head,
        dentry: dentry as u64,
        ns,
        slot: gate.slot,
        write_default: gate.config.file_write_default,
        denied_rule: denied.write,
        overridden: u32::from(overridden),
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = scan_mount;
    // SAFETY: `state` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe {
        bpf_loop(
            MAX_SB_MOUNTS,
            step as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    if ret < 0 {
        return Some((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    }
    // SAFETY: our per-CPU map value, written by the callback on this CPU.
    let found = unsafe { &*found };
    if overridden && found.internal != 0 {
        return None;
    }
    let verdict = Verdict {
        decision: found.decision,
        reason: found.reason,
        rule_id: found.rule_id,
    };
    if found.decision == action::DENY {
        return Some((verdict, found.len));
    }
    if found.ended == 0 {
        return Some((Verdict::deny(reason::NO_PATH_IN_NS), 0));
    }
    if found.judged != 0 {
        if found.decision != action::ALLOW {
            return Some((Verdict::deny(reason::PATH_UNRESOLVED), 0));
        }
        return Some((verdict, found.len));
    }
    if found.internal != 0 && found.foreign == 0 {
        return None;
    }
    Some((Verdict::deny(reason::NO_PATH_IN_NS), 0))
}

/// One `bpf_loop` iteration: visits one mount of the file system. Returns 1 to stop (past the
/// last mount, or a denied path when nothing else can change the outcome), 0 to go on.
#[inline(never)]
extern "C" fn scan_mount(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `MountScan` that `judge_dentry` passed to `bpf_loop`.
    let state = unsafe { &mut *ctx.cast::<MountScan>() };
    let Some(found) = ATTR_SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: our per-CPU map value, only touched on this CPU while the hook runs.
    let found = unsafe { &mut *found };
    let mount = state.mount;
    if mount == 0 {
        found.ended = 1;
        return 1;
    }
    let o = offsets::mount_scan_offsets();
    let next = read_u64(mount + o.sb_link);
    state.mount = if o.is_list {
        if next == state.head || next == 0 {
            0
        } else {
            next.wrapping_sub(o.sb_link)
        }
    } else {
        next
    };
    let ns = read_u64(mount + o.mount_ns);
    let vfsmount = mount + o.mount_mnt;
    if ns != state.ns {
        if ns == MNT_NS_INTERNAL {
            if reaches(read_u64(vfsmount + o.mnt_root), state.dentry, o.d_parent) {
                found.internal = 1;
            }
        } else {
            found.foreign = 1;
        }
        return 0;
    }
    if !reaches(read_u64(vfsmount + o.mnt_root), state.dentry, o.d_parent) {
        return 0;
    }
    found.judged = 1;
    if found.decision == action::DENY {
        // The first denied path is the one recorded (still in the scratch buffer).
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        set_verdict(found, Verdict::deny(reason::PATH_UNRESOLVED), 0);
        return i64::from(state.overridden == 0);
    };
    match resolve_by_walk(vfsmount, state.dentry, scratch) {
        Ok(len) => {
            let by_path = lookup_path(
                &FILE_WRITE_RULES,
                scratch,
                state.slot,
                len,
                state.write_default,
            );
            set_verdict(found, by_identity(state.denied_rule, by_path), len);
        }
        Err((verdict, len)) => set_verdict(found, verdict, len),
    }
    if found.decision == action::DENY && state.overridden == 0 {
        return 1;
    }
    0
}

#[inline(always)]
fn set_verdict(found: &mut ScanResult, verdict: Verdict, len: u32) {
    found.decision = verdict.decision;
    found.reason = verdict.reason;
    found.rule_id = verdict.rule_id;
    found.len = len;
}

/// What [`climb_step`] needs from the last step, on the caller's stack.
#[repr(C)]
struct Climb {
    current: u64,
    root: u64,
    d_parent: u64,
    /// 1 once `root` was met.
    reached: u64,
}

/// Whether `root` is `dentry` or one of its ancestors (0 or an unreadable parent: no), within
/// [`MAX_DEPTH`] names.
///
/// One name per `bpf_loop` iteration: the verifier checks a step once, not once per depth
/// (and keeps nothing of the depth for the path walk that follows to multiply).
#[inline(always)]
fn reaches(root: u64, dentry: u64, d_parent: u64) -> bool {
    if root == 0 {
        return false;
    }
    let mut climb = Climb {
        current: dentry,
        root,
        d_parent,
        reached: 0,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = climb_step;
    // SAFETY: `climb` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe { bpf_loop(MAX_DEPTH, step as *mut c_void, (&raw mut climb).cast(), 0) };
    ret >= 0 && climb.reached != 0
}

/// One step of [`reaches`]: 1 to stop (met the root, or reached the top), 0 to go on.
#[inline(never)]
extern "C" fn climb_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Climb` that `reaches` passed to `bpf_loop`.
    let climb = unsafe { &mut *ctx.cast::<Climb>() };
    let current = climb.current;
    if current == climb.root {
        climb.reached = 1;
        return 1;
    }
    let parent = read_u64(current + climb.d_parent);
    if parent == current || parent == 0 {
        return 1;
    }
    climb.current = parent;
    0
}

/// Reads a kernel word at `addr` (0 if it cannot be read).
#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const u64).unwrap_or(0) }
}

/// Sends the record of one decided change.
#[inline(always)]
fn record(op: u32, gate: &Gate, decided: &(Verdict, u32), detail: u32) {
    if let Some(mut entry) = start_event(op, gate, &decided.0) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).access = access::WRITE;
            (*event).detail = detail;
        }
        record_path(event, decided.1);
        entry.submit(0);
    }
}
