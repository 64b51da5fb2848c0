//! The guard against switching oxd off or leaving the confinement through the kernel's own
//! interfaces: `bpf()` (oxd's programs, maps and links), cgroup file systems (moving a process
//! across the confinement's border, freezing or killing oxd's cgroups) and the kernel's
//! interface file systems (oxd's pins on bpffs, sysctls that make the kernel start a process
//! outside the confinement, `/sys`, `/proc/PID` entries of oxd's processes).
//!
//! Every decision here is a guard decision ([`crate::guard`]): denied for every confined task
//! whatever its uid, capabilities, policy or mode, and recorded.

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use oxd_common::op;

use crate::{
    confine::Gate,
    guard::{deny, gate},
    ipc::{side_of, Side},
    maps::{CONFINED, PROTECTED},
    offsets,
};

/// `MAY_WRITE` and `MAY_APPEND` in `inode_permission`'s mask.
const MAY_WRITE: i32 = 0x2;
const MAY_APPEND: i32 = 0x8;

/// `KERNFS_DIR`, and the mask of a kernfs node's type in `kn->flags`.
const KERNFS_DIR: u16 = 0x1;
const KERNFS_TYPE_MASK: u16 = 0xf;

/// File-system magic numbers (`include/uapi/linux/magic.h`).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const SYSFS_MAGIC: u64 = 0x6265_6572;
const SECURITYFS_MAGIC: u64 = 0x7363_6673;
const DEBUGFS_MAGIC: u64 = 0x6462_6720;
const TRACEFS_MAGIC: u64 = 0x7472_6163;
const CONFIGFS_MAGIC: u64 = 0x6265_6570;
const BINFMTFS_MAGIC: u64 = 0x4249_4e4d;
const PSTOREFS_MAGIC: u64 = 0x6165_676c;
const EFIVARFS_MAGIC: u64 = 0xde5e_81e4;

/// Every `bpf()` command of a confined task (BPF-LSM `bpf`). Nothing an agent legitimately
/// needs uses `bpf()`, and most commands (`BPF_LINK_DETACH`, `BPF_PROG_DETACH`,
/// `BPF_MAP_UPDATE_ELEM` on oxd's maps, the `*_GET_NEXT_ID`/`*_GET_FD_BY_ID` that reach oxd's
/// objects, `BPF_OBJ_GET` of its pins) could switch oxd off.
#[lsm(hook = "bpf")]
fn bpf(ctx: LsmContext) -> i32 {
    // int bpf(int cmd, union bpf_attr *attr, unsigned int size), then the previous LSM's
    // verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    let cmd: i32 = ctx.arg(0);
    deny(&gate, op::BPF, cmd as u32, 0)
}

/// Writes by a confined task to cgroup file systems outside its confinement and to the
/// kernel's interface file systems (BPF-LSM `inode_permission`, asked for every path
/// component of every lookup: only a request to write gets past the first test).
#[lsm(hook = "inode_permission")]
fn inode_permission(ctx: LsmContext) -> i32 {
    // int inode_permission(struct inode *inode, int mask), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mask: i32 = ctx.arg(1);
    if mask & (MAY_WRITE | MAY_APPEND) == 0 {
        return 0;
    }
    let inode: *const u8 = ctx.arg(0);
    let magic = offsets::inode_sb_magic(inode);
    match magic {
        CGROUP2_SUPER_MAGIC | CGROUP_SUPER_MAGIC | PROC_SUPER_MAGIC | BPF_FS_MAGIC
        | SYSFS_MAGIC | SECURITYFS_MAGIC | DEBUGFS_MAGIC | TRACEFS_MAGIC | CONFIGFS_MAGIC
        | BINFMTFS_MAGIC | PSTOREFS_MAGIC | EFIVARFS_MAGIC => {}
        _ => return 0,
    }
    let gate = gate();
    if !gate.decide {
        return 0;
    }
    let inode = inode as u64;
    match magic {
        CGROUP2_SUPER_MAGIC => decide_cgroup2(&gate, inode),
        CGROUP_SUPER_MAGIC => deny(&gate, op::CGROUP_WRITE, 0, 0),
        PROC_SUPER_MAGIC => decide_proc(&gate, inode),
        _ => deny(&gate, op::KERNEL_FS_WRITE, magic as u32, 0),
    }
}

/// A write to a cgroup2 inode: allowed when its cgroup is inside the agent's confinement (the
/// nearest confined ancestor-or-self is the agent's, as [`crate::ipc`] decides for the other
/// party of a signal), denied otherwise and when it cannot be told.
///
/// Of the confined cgroup itself (the confinement's root), only the files the kernel's own
/// delegation model hands to a delegatee may be written: `cgroup.procs`, `cgroup.threads` and
/// `cgroup.subtree_control` (moving the agent's processes between its cgroups, and enabling
/// controllers below). Its other files (`pids.max`, `memory.max`, `cpu.max`,
/// `cgroup.freeze`, `cgroup.kill`, `cgroup.max.descendants`, ...) are the limits and switches
/// set on the agent from outside: a root agent could lift them. Those of cgroups the agent
/// made below its own are its own to set (a parent's limit still applies to them).
///
/// The kernel's own migration check asks this for the common ancestor's `cgroup.procs` with
/// the migrating task's rights, so moving a process across the border (out of the
/// confinement, or an outside process in, or `clone3(CLONE_INTO_CGROUP)` outside) is denied
/// here whichever `cgroup.procs` file was opened, and by whom.
#[inline(always)]
fn decide_cgroup2(gate: &Gate, inode: u64) -> i32 {
    let node = kernfs_inode_cgroup(inode);
    let cgroup = node.map_or(0, |n| n.cgroup);
    let id = if cgroup == 0 {
        0
    } else {
        offsets::cgroup_id(cgroup).unwrap_or(0)
    };
    if cgroup != 0 && side_of(cgroup) == Side::Inside {
        let file = node.map_or(0, |n| n.file);
        // SAFETY: the key and value are plain integers.
        let root = id != 0 && unsafe { CONFINED.get(id) }.is_some();
        if file == 0 || !root || delegatable(file) {
            return 0;
        }
    }
    deny(gate, op::CGROUP_WRITE, id as u32, 0)
}

/// A cgroup2 inode: its `struct cgroup` (a directory's own, `kn->priv`; a file's directory's,
/// `kn->parent->priv`), and for a file its `kernfs_node` (0 for a directory).
#[derive(Clone, Copy)]
struct CgroupNode {
    cgroup: u64,
    file: u64,
}

/// What a cgroup2 inode is ([`CgroupNode`]); `None` if it cannot be read.
#[inline(always)]
fn kernfs_inode_cgroup(inode: u64) -> Option<CgroupNode> {
    let kn = offsets::inode_private(inode)?;
    if kn == 0 {
        return None;
    }
    let flags = offsets::kernfs_flags(kn)?;
    let (dir, file) = if flags & KERNFS_TYPE_MASK == KERNFS_DIR {
        (kn, 0)
    } else {
        (offsets::kernfs_parent(kn)?, kn)
    };
    if dir == 0 {
        return None;
    }
    let cgroup = offsets::kernfs_priv(dir).filter(|&c| c != 0)?;
    Some(CgroupNode { cgroup, file })
}

/// The files of a cgroup its delegatee may write (`Documentation/admin-guide/cgroup-v2.rst`,
/// "Delegation Containment"), with their terminating NUL.
const DELEGATABLE: [&[u8]; 3] = [
    b"cgroup.procs\0",
    b"cgroup.threads\0",
    b"cgroup.subtree_control\0",
];

/// Whether the kernfs file `kn` is one of [`DELEGATABLE`]; false when its name cannot be read.
#[inline(always)]
fn delegatable(kn: u64) -> bool {
    let Some(name) = offsets::kernfs_name(kn) else {
        return false;
    };
    if name == 0 {
        return false;
    }
    let mut buf = [0u8; 24];
    // SAFETY: reads at most `buf.len()` bytes of a kernel string into `buf`.
    if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf) }.is_err() {
        return false;
    }
    DELEGATABLE.iter().any(|want| same_prefix(&buf, want))
}

/// Whether `buf` starts with `want` (at most `buf.len()` bytes): a loop of constant bounds.
#[inline(always)]
fn same_prefix(buf: &[u8; 24], want: &[u8]) -> bool {
    let mut i = 0;
    while i < want.len() && i < buf.len() {
        if buf[i] != want[i] {
            return false;
        }
        i += 1;
    }
    i == want.len()
}

/// A write to a procfs inode: a process's own entries (`/proc/PID/...`) are left to the other
/// checks unless the process is one of oxd's; every other entry (`/proc/sys`, sysrq-trigger,
/// ...) is the kernel's and denied.
#[inline(always)]
fn decide_proc(gate: &Gate, inode: u64) -> i32 {
    let Some(pid) = offsets::proc_inode_pid(inode) else {
        return deny(gate, op::KERNEL_FS_WRITE, PROC_SUPER_MAGIC as u32, 0);
    };
    if pid == 0 {
        return deny(gate, op::KERNEL_FS_WRITE, PROC_SUPER_MAGIC as u32, 0);
    }
    let (Some(nr), Some(tgid)) = (offsets::pid_number(pid), offsets::pid_task_tgid(pid)) else {
        return deny(gate, op::KERNEL_FS_WRITE, PROC_SUPER_MAGIC as u32, 0);
    };
    // SAFETY: the key and value are plain integers.
    if unsafe { PROTECTED.get(nr) }.is_some() {
        return deny(gate, op::KERNEL_FS_WRITE, PROC_SUPER_MAGIC as u32, nr);
    }
    // SAFETY: as above.
    if tgid != 0 && unsafe { PROTECTED.get(tgid) }.is_some() {
        return deny(gate, op::KERNEL_FS_WRITE, PROC_SUPER_MAGIC as u32, tgid);
    }
    0
}
