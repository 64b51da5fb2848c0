//! The kernel structs the LSM hooks read, through offsets taken from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE field relocations and struct layouts differ between kernel builds
//! (`file.f_path` is at 16 on 6.1 and at 64 on 6.12), so user space reads each offset from
//! /sys/kernel/btf/vmlinux and sets the globals below before load (`override_global`, by these
//! symbol names). Read-only globals are constants to the verifier, which then checks every
//! load below against the BTF type of the field it lands on, and rejects the program if it
//! lands elsewhere.
//!
//! The accessors take the `struct file *`, `struct linux_binprm *` or
//! `struct vm_area_struct *` a hook was given. Loads
//! through such BTF pointers are checked by the verifier and cannot fault (the kernel turns
//! them into exception-handled loads), so they are safe functions. Where only a number is
//! wanted at the end of a chain of pointers (an inode's identity, a file system's magic), the
//! chain is read with `bpf_probe_read_kernel` instead: each pointer loaded through BTF costs
//! the verifier a search of the kernel's BTF by name (is the pointed-to type trusted?), which
//! on 6.12 is a linear scan of every type, at every visit of every such load: seconds of CPU
//! per load of the programs.

use core::ptr::read_volatile;

use aya_ebpf::bindings::path;

/// Offset 0: `struct path`'s first member, `mnt`.
static ZERO_OFFSET: u32 = 0;

/// Offset of `file` in `struct linux_binprm`.
#[no_mangle]
static BPRM_FILE_OFFSET: u32 = 0;

/// Offset of `f_path` in `struct file`.
#[no_mangle]
static FILE_F_PATH_OFFSET: u32 = 0;

/// Offset of `f_mode` in `struct file`.
#[no_mangle]
static FILE_F_MODE_OFFSET: u32 = 0;

/// Offset of `f_flags` in `struct file`.
#[no_mangle]
static FILE_F_FLAGS_OFFSET: u32 = 0;

/// Offset of `f_inode` in `struct file`.
#[no_mangle]
static FILE_F_INODE_OFFSET: u32 = 0;

/// Offset of `i_ino` in `struct inode`.
#[no_mangle]
static INODE_I_INO_OFFSET: u32 = 0;

/// Offset of `i_sb` in `struct inode`.
#[no_mangle]
static INODE_I_SB_OFFSET: u32 = 0;

/// Offset of `s_dev` in `struct super_block`.
#[no_mangle]
static SB_S_DEV_OFFSET: u32 = 0;

/// Offset of `vm_file` in `struct vm_area_struct`.
#[no_mangle]
static VMA_VM_FILE_OFFSET: u32 = 0;

/// Offset of `vm_flags` in `struct vm_area_struct`.
#[no_mangle]
static VMA_VM_FLAGS_OFFSET: u32 = 0;

/// Offset of `i_flags` in `struct inode`.
#[no_mangle]
static INODE_I_FLAGS_OFFSET: u32 = 0;

/// A load-time offset. Volatile, so the compiler cannot fold the 0 it was compiled with.
#[inline(always)]
fn offset(global: &'static u32) -> usize {
    // SAFETY: a plain read of one of our own statics.
    unsafe { read_volatile(global) as usize }
}

/// `bprm->file`: the file an exec is about to run.
#[inline(always)]
pub(crate) fn bprm_file(bprm: *const u8) -> *const u8 {
    // SAFETY: a BTF-checked load of `linux_binprm.file` (module docs).
    unsafe { *(bprm.add(offset(&BPRM_FILE_OFFSET)).cast::<*const u8>()) }
}

/// `&file->f_path`: what `bpf_d_path` resolves.
#[inline(always)]
pub(crate) fn file_path(file: *const u8) -> *mut path {
    // SAFETY: pointer arithmetic only; the verifier accepts the result as a `struct path *`
    // because the offset lands on `file.f_path`.
    unsafe {
        file.add(offset(&FILE_F_PATH_OFFSET))
            .cast::<path>()
            .cast_mut()
    }
}

/// `file->f_mode` (`FMODE_*` bits, see `oxd_common::fmode`).
#[inline(always)]
pub(crate) fn file_mode(file: *const u8) -> u32 {
    // SAFETY: a BTF-checked load of `file.f_mode` (module docs).
    unsafe { *(file.add(offset(&FILE_F_MODE_OFFSET)).cast::<u32>()) }
}

/// `file->f_flags` (the `O_*` flags of the open).
#[inline(always)]
pub(crate) fn file_flags(file: *const u8) -> u32 {
    // SAFETY: a BTF-checked load of `file.f_flags` (module docs).
    unsafe { *(file.add(offset(&FILE_F_FLAGS_OFFSET)).cast::<u32>()) }
}

/// The identity of the file: (`file->f_inode->i_ino`, `file->f_inode->i_sb->s_dev`); (0, 0)
/// if it cannot be read.
#[inline(always)]
pub(crate) fn file_identity(file: *const u8) -> (u64, u32) {
    let inode = read_at::<u64>(file as u64, &FILE_F_INODE_OFFSET).unwrap_or(0);
    inode_identity(inode as *const u8)
}

/// `vma->vm_file`: the file a mapping maps, null for anonymous memory.
#[inline(always)]
pub(crate) fn vma_file(vma: *const u8) -> *const u8 {
    // SAFETY: a BTF-checked load of `vm_area_struct.vm_file` (module docs).
    unsafe { *(vma.add(offset(&VMA_VM_FILE_OFFSET)).cast::<*const u8>()) }
}

/// `vma->vm_flags` (`VM_*` bits).
#[inline(always)]
pub(crate) fn vma_flags(vma: *const u8) -> u64 {
    // SAFETY: a BTF-checked load of `vm_area_struct.vm_flags` (module docs).
    unsafe { *(vma.add(offset(&VMA_VM_FLAGS_OFFSET)).cast::<u64>()) }
}

/// `file->f_inode->i_flags` (`S_*` bits); 0 if they cannot be read.
#[inline(always)]
pub(crate) fn file_inode_flags(file: *const u8) -> u32 {
    let inode = read_at::<u64>(file as u64, &FILE_F_INODE_OFFSET).unwrap_or(0);
    read_at::<u32>(inode, &INODE_I_FLAGS_OFFSET).unwrap_or(0)
}

// namespaces

/// Offset of `user_ns` in `struct cred`.
#[no_mangle]
static CRED_USER_NS_OFFSET: u32 = 0;

/// Offset of `nsproxy` in `struct task_struct`.
#[no_mangle]
static TASK_NSPROXY_OFFSET: u32 = 0;

/// Offset of `mnt_ns` in `struct nsproxy`.
#[no_mangle]
static NSPROXY_MNT_NS_OFFSET: u32 = 0;

/// Offset of `mnt` (the embedded `struct vfsmount`) in `struct mount`.
#[no_mangle]
static MOUNT_MNT_OFFSET: u32 = 0;

/// Offset of `mnt_ns` in `struct mount`.
#[no_mangle]
static MOUNT_MNT_NS_OFFSET: u32 = 0;

/// `cred->user_ns`: the user namespace a credential's capabilities belong to, as an address
/// (null if it cannot be read).
#[inline(always)]
pub(crate) fn cred_user_ns(cred: *const u8) -> *const u8 {
    read_at::<u64>(cred as u64, &CRED_USER_NS_OFFSET).unwrap_or(0) as *const u8
}

/// The mount namespace of the mount `file` lives on (`real_mount(file->f_path.mnt)->mnt_ns`):
/// 0 if it cannot be read. `struct mount` is reached backwards from the `struct vfsmount` it
/// embeds, which the verifier cannot type, so that part goes through `bpf_probe_read_kernel`.
#[inline(always)]
pub(crate) fn file_mnt_ns(file: *const u8) -> u64 {
    // SAFETY: a BTF-checked load of `file.f_path.mnt` (`mnt` is the first member of
    // `struct path`), then a fault-tolerant read of the enclosing `struct mount`'s `mnt_ns`.
    unsafe {
        let vfsmount = read_at::<u64>(file_path(file) as u64, &ZERO_OFFSET).unwrap_or(0);
        if vfsmount == 0 {
            return 0;
        }
        let field = vfsmount
            .wrapping_sub(offset(&MOUNT_MNT_OFFSET) as u64)
            .wrapping_add(offset(&MOUNT_MNT_NS_OFFSET) as u64);
        aya_ebpf::helpers::bpf_probe_read_kernel(field as *const u64).unwrap_or(0)
    }
}

/// The current task's mount namespace (`current->nsproxy->mnt_ns`): 0 if it cannot be read.
#[inline(always)]
pub(crate) fn current_mnt_ns() -> u64 {
    // SAFETY: fault-tolerant reads of the current task's `nsproxy` and its `mnt_ns`.
    unsafe {
        let task = aya_ebpf::helpers::generated::bpf_get_current_task();
        let nsproxy = aya_ebpf::helpers::bpf_probe_read_kernel(
            task.wrapping_add(offset(&TASK_NSPROXY_OFFSET) as u64) as *const u64,
        )
        .unwrap_or(0);
        if nsproxy == 0 {
            return 0;
        }
        aya_ebpf::helpers::bpf_probe_read_kernel(
            nsproxy.wrapping_add(offset(&NSPROXY_MNT_NS_OFFSET) as u64) as *const u64,
        )
        .unwrap_or(0)
    }
}

// ipc: the other party of a ptrace, signal or Unix socket operation, read with
// `bpf_probe_read_kernel` (a failed read fails closed), so these need no BTF-typed pointers.

/// Offset of `cgroups` (`struct css_set *`) in `struct task_struct`.
#[no_mangle]
static TASK_CGROUPS_OFFSET: u32 = 0;

/// Offset of `tgid` in `struct task_struct`.
#[no_mangle]
static TASK_TGID_OFFSET: u32 = 0;

/// Offset of `dfl_cgrp` (the task's cgroup v2) in `struct css_set`.
#[no_mangle]
static CSS_SET_DFL_CGRP_OFFSET: u32 = 0;

/// Offset of `kn` in `struct cgroup`.
#[no_mangle]
static CGROUP_KN_OFFSET: u32 = 0;

/// Offset of `self.parent` in `struct cgroup`: the parent's `struct cgroup_subsys_state *`.
#[no_mangle]
static CGROUP_PARENT_CSS_OFFSET: u32 = 0;

/// Offset of `cgroup` in `struct cgroup_subsys_state`.
#[no_mangle]
static CSS_CGROUP_OFFSET: u32 = 0;

/// Offset of `id` (the cgroup id, a `u64`) in `struct kernfs_node`.
#[no_mangle]
static KERNFS_NODE_ID_OFFSET: u32 = 0;

/// Offset of `sk` in `struct socket`.
#[no_mangle]
static SOCKET_SK_OFFSET: u32 = 0;

/// Offset of `sk_cgrp_data.cgroup` (the cgroup of the socket's creator) in `struct sock`.
#[no_mangle]
static SOCK_CGROUP_OFFSET: u32 = 0;

/// Offset of `sk_peer_pid` in `struct sock`.
#[no_mangle]
static SOCK_PEER_PID_OFFSET: u32 = 0;

/// Offset of `numbers[0].nr` in `struct pid`.
#[no_mangle]
static PID_NR_OFFSET: u32 = 0;

/// Offset of `addr` in `struct unix_sock`.
#[no_mangle]
static UNIX_SOCK_ADDR_OFFSET: u32 = 0;

/// Offset of `len` in `struct unix_address`.
#[no_mangle]
static UNIX_ADDRESS_LEN_OFFSET: u32 = 0;

/// Offset of `name` (a `struct sockaddr_un`) in `struct unix_address`.
#[no_mangle]
static UNIX_ADDRESS_NAME_OFFSET: u32 = 0;

/// Reads the `T` at `base + offset(global)` of kernel memory; `None` if `base` is null or the
/// read fails.
#[inline(always)]
pub(crate) fn read_at<T>(base: u64, global: &'static u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    let at = base.wrapping_add(offset(global) as u64) as *const T;
    // SAFETY: `bpf_probe_read_kernel` checks the address; a bad one is an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(at).ok() }
}

/// `task->cgroups->dfl_cgrp`: the task's cgroup v2, as an address.
#[inline(always)]
pub(crate) fn task_cgroup(task: u64) -> Option<u64> {
    let css_set = read_at::<u64>(task, &TASK_CGROUPS_OFFSET)?;
    read_at::<u64>(css_set, &CSS_SET_DFL_CGRP_OFFSET).filter(|&c| c != 0)
}

/// `task->tgid`: the task's process id (0 if it cannot be read).
#[inline(always)]
pub(crate) fn task_tgid(task: u64) -> u32 {
    read_at::<u32>(task, &TASK_TGID_OFFSET).unwrap_or(0)
}

/// `cgroup->kn->id`: the cgroup's id.
#[inline(always)]
pub(crate) fn cgroup_id(cgroup: u64) -> Option<u64> {
    let kn = read_at::<u64>(cgroup, &CGROUP_KN_OFFSET)?;
    read_at::<u64>(kn, &KERNFS_NODE_ID_OFFSET)
}

/// The parent of `cgroup` (`cgroup->self.parent->cgroup`): `Some(0)` for the root cgroup,
/// `None` if it cannot be read.
#[inline(always)]
pub(crate) fn cgroup_parent(cgroup: u64) -> Option<u64> {
    let css = read_at::<u64>(cgroup, &CGROUP_PARENT_CSS_OFFSET)?;
    if css == 0 {
        return Some(0);
    }
    read_at::<u64>(css, &CSS_CGROUP_OFFSET)
}

/// `socket->sk`.
#[inline(always)]
pub(crate) fn socket_sk(socket: u64) -> Option<u64> {
    read_at::<u64>(socket, &SOCKET_SK_OFFSET).filter(|&s| s != 0)
}

/// `sk->sk_cgrp_data.cgroup`: the cgroup of the task that created the socket.
#[inline(always)]
pub(crate) fn sock_cgroup(sk: u64) -> Option<u64> {
    read_at::<u64>(sk, &SOCK_CGROUP_OFFSET).filter(|&c| c != 0)
}

/// `pid_nr(sk->sk_peer_pid)`: for a listening Unix socket, its listener's process id; 0 if
/// none.
#[inline(always)]
pub(crate) fn sock_peer_pid(sk: u64) -> u32 {
    read_at::<u64>(sk, &SOCK_PEER_PID_OFFSET)
        .and_then(|pid| read_at::<u32>(pid, &PID_NR_OFFSET))
        .unwrap_or(0)
}

/// `unix_sk(sk)->addr`: the socket's `struct unix_address`, as an address (0: unnamed).
#[inline(always)]
pub(crate) fn unix_address(sk: u64) -> u64 {
    read_at::<u64>(sk, &UNIX_SOCK_ADDR_OFFSET).unwrap_or(0)
}

/// `addr->len` (the length of `addr->name`, `sun_family` included) and the address of
/// `addr->name`.
#[inline(always)]
pub(crate) fn unix_address_name(addr: u64) -> Option<(i32, u64)> {
    let len = read_at::<i32>(addr, &UNIX_ADDRESS_LEN_OFFSET)?;
    Some((len, addr + offset(&UNIX_ADDRESS_NAME_OFFSET) as u64))
}
// Directory entries and mounts, for the paths the `path_*` hooks build by hand (see
// `path::resolve_by_walk`).

/// Offset of `mnt` in `struct path`.
#[no_mangle]
static PATH_MNT_OFFSET: u32 = 0;

/// Offset of `dentry` in `struct path`.
#[no_mangle]
static PATH_DENTRY_OFFSET: u32 = 0;

/// Offset of `mnt_root` in `struct vfsmount`.
#[no_mangle]
static VFSMOUNT_MNT_ROOT_OFFSET: u32 = 0;

/// Offset of `d_parent` in `struct dentry`.
#[no_mangle]
static DENTRY_D_PARENT_OFFSET: u32 = 0;

/// Offset of `d_name` in `struct dentry`.
#[no_mangle]
static DENTRY_D_NAME_OFFSET: u32 = 0;

/// Offset of `d_inode` in `struct dentry`.
#[no_mangle]
static DENTRY_D_INODE_OFFSET: u32 = 0;

/// Offset of `len` in `struct qstr`.
#[no_mangle]
static QSTR_LEN_OFFSET: u32 = 0;

/// Offset of `name` in `struct qstr`.
#[no_mangle]
static QSTR_NAME_OFFSET: u32 = 0;

/// `path->dentry`, as an address for further reads (null if it cannot be read).
#[inline(always)]
pub(crate) fn path_dentry(path: *const path) -> *const u8 {
    read_at::<u64>(path as u64, &PATH_DENTRY_OFFSET).unwrap_or(0) as *const u8
}

/// `dentry->d_inode`: null for a name that does not exist (yet), or if it cannot be read.
#[inline(always)]
pub(crate) fn dentry_inode(dentry: *const u8) -> *const u8 {
    read_at::<u64>(dentry as u64, &DENTRY_D_INODE_OFFSET).unwrap_or(0) as *const u8
}

/// `dentry->d_parent` (a dentry is its own parent at the root of its file system); null if it
/// cannot be read.
#[inline(always)]
pub(crate) fn dentry_parent(dentry: *const u8) -> *const u8 {
    read_at::<u64>(dentry as u64, &DENTRY_D_PARENT_OFFSET).unwrap_or(0) as *const u8
}

/// The identity of an inode: (`inode->i_ino`, `inode->i_sb->s_dev`); (0, 0) if it cannot be
/// read.
#[inline(always)]
pub(crate) fn inode_identity(inode: *const u8) -> (u64, u32) {
    let ino = read_at::<u64>(inode as u64, &INODE_I_INO_OFFSET).unwrap_or(0);
    let sb = read_at::<u64>(inode as u64, &INODE_I_SB_OFFSET).unwrap_or(0);
    (ino, read_at::<u32>(sb, &SB_S_DEV_OFFSET).unwrap_or(0))
}

/// Offset of `mnt_parent` in `struct mount`.
#[no_mangle]
static MOUNT_MNT_PARENT_OFFSET: u32 = 0;

/// Offset of `mnt_mountpoint` in `struct mount`.
#[no_mangle]
static MOUNT_MNT_MOUNTPOINT_OFFSET: u32 = 0;

/// The offsets [`crate::path::resolve_by_walk`] reads through `bpf_probe_read_kernel` (it
/// walks from a `struct vfsmount` back to its `struct mount`, a negative offset the verifier
/// does not allow through BTF pointers).
#[derive(Clone, Copy)]
pub(crate) struct WalkOffsets {
    pub(crate) mount_mnt: u64,
    pub(crate) mount_parent: u64,
    pub(crate) mount_mountpoint: u64,
    pub(crate) mnt_root: u64,
    pub(crate) d_parent: u64,
    pub(crate) d_name_len: u64,
    pub(crate) d_name_name: u64,
}

/// The offsets of [`WalkOffsets`].
#[inline(always)]
pub(crate) fn walk_offsets() -> WalkOffsets {
    let d_name = offset(&DENTRY_D_NAME_OFFSET) as u64;
    WalkOffsets {
        mount_mnt: offset(&MOUNT_MNT_OFFSET) as u64,
        mount_parent: offset(&MOUNT_MNT_PARENT_OFFSET) as u64,
        mount_mountpoint: offset(&MOUNT_MNT_MOUNTPOINT_OFFSET) as u64,
        mnt_root: offset(&VFSMOUNT_MNT_ROOT_OFFSET) as u64,
        d_parent: offset(&DENTRY_D_PARENT_OFFSET) as u64,
        d_name_len: d_name + offset(&QSTR_LEN_OFFSET) as u64,
        d_name_name: d_name + offset(&QSTR_NAME_OFFSET) as u64,
    }
}

/// `path->mnt`, as an address (0 if it cannot be read).
#[inline(always)]
pub(crate) fn path_mnt(path: *const path) -> u64 {
    read_at::<u64>(path as u64, &PATH_MNT_OFFSET).unwrap_or(0)
}

// Unix socket rules (`[ipc] unix_allow`/`unix_deny`, see `crate::unix`).

/// Offset of `path` (the `struct path` a socket bound to a file-system name was bound at) in
/// `struct unix_sock`.
#[no_mangle]
static UNIX_SOCK_PATH_OFFSET: u32 = 0;

/// `unix_sk(sk)->addr`, telling a failed read (`None`) from an unnamed socket (`Some(0)`).
#[inline(always)]
pub(crate) fn unix_address_checked(sk: u64) -> Option<u64> {
    read_at::<u64>(sk, &UNIX_SOCK_ADDR_OFFSET)
}

/// `unix_sk(sk)->path` as (`mnt`, `dentry`) addresses: both 0 for a socket not bound to a
/// file-system name (abstract or unnamed); `None` if they cannot be read.
#[inline(always)]
pub(crate) fn unix_sock_path(sk: u64) -> Option<(u64, u64)> {
    if sk == 0 {
        return None;
    }
    let path = sk.wrapping_add(offset(&UNIX_SOCK_PATH_OFFSET) as u64);
    let mnt = read_at::<u64>(path, &PATH_MNT_OFFSET)?;
    let dentry = read_at::<u64>(path, &PATH_DENTRY_OFFSET)?;
    Some((mnt, dentry))
}

/// The first byte of `sun_path` in a `struct unix_address`'s `name` at `name` (0 for an
/// abstract name); `None` if it cannot be read.
#[inline(always)]
pub(crate) fn unix_sun_path_first(name: u64) -> Option<u8> {
    if name == 0 {
        return None;
    }
    // SAFETY: `bpf_probe_read_kernel` checks the address; a bad one is an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((name + 2) as *const u8).ok() }
}

// Changes given as a dentry without a mount (`attr.rs`): the file system's mounts, the task's
// credentials, the attributes a `setattr` changes.

/// Offset of `d_sb` in `struct dentry`.
#[no_mangle]
static DENTRY_D_SB_OFFSET: u32 = 0;

/// Offset of `s_mounts` in `struct super_block`.
#[no_mangle]
static SB_S_MOUNTS_OFFSET: u32 = 0;

/// Offset of a mount's link in its file system's `s_mounts`: `mnt_instance` (a `list_head`)
/// or, on kernels where `s_mounts` points at the first mount, `mnt_next_for_sb`.
#[no_mangle]
static MOUNT_SB_LINK_OFFSET: u32 = 0;

/// 1 if `s_mounts` is a `list_head` (6.1, 6.12), 0 if it is a `struct mount *`.
#[no_mangle]
static SB_MOUNTS_LIST: u32 = 0;

/// Offset of `cred` in `struct task_struct`.
#[no_mangle]
static TASK_CRED_OFFSET: u32 = 0;

/// Offset of `real_cred` in `struct task_struct`.
#[no_mangle]
static TASK_REAL_CRED_OFFSET: u32 = 0;

/// Offset of `ia_valid` in `struct iattr`.
#[no_mangle]
static IATTR_IA_VALID_OFFSET: u32 = 0;

/// `dentry->d_sb`, as an address (0 if it cannot be read).
#[inline(always)]
pub(crate) fn dentry_sb(dentry: *const u8) -> u64 {
    read_at::<u64>(dentry as u64, &DENTRY_D_SB_OFFSET).unwrap_or(0)
}

/// `attr->ia_valid`: the `ATTR_*` bits of what a `setattr` changes.
#[inline(always)]
pub(crate) fn iattr_valid(attr: *const u8) -> u32 {
    // SAFETY: a BTF-checked load of `iattr.ia_valid` (module docs).
    unsafe { *(attr.add(offset(&IATTR_IA_VALID_OFFSET)).cast::<u32>()) }
}

/// Whether the current task acts with credentials other than its own
/// (`current->cred != current->real_cred`), as overlayfs does for the changes it makes to its
/// layers. `None` if they cannot be read.
#[inline(always)]
pub(crate) fn creds_overridden() -> Option<bool> {
    // SAFETY: a helper call without arguments.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let cred = read_at::<u64>(task, &TASK_CRED_OFFSET)?;
    let real = read_at::<u64>(task, &TASK_REAL_CRED_OFFSET)?;
    Some(cred != real)
}

/// The offsets the scan of a file system's mounts reads through `bpf_probe_read_kernel`.
#[derive(Clone, Copy)]
pub(crate) struct MountScanOffsets {
    /// `super_block.s_mounts`.
    pub(crate) sb_mounts: u64,
    /// A mount's link in `s_mounts`.
    pub(crate) sb_link: u64,
    /// Whether `s_mounts` is a `list_head`.
    pub(crate) is_list: bool,
    /// `struct mount.mnt_ns`.
    pub(crate) mount_ns: u64,
    /// `struct mount.mnt` (the embedded `vfsmount`).
    pub(crate) mount_mnt: u64,
    /// `vfsmount.mnt_root`.
    pub(crate) mnt_root: u64,
    /// `dentry.d_parent`.
    pub(crate) d_parent: u64,
}

/// The offsets of [`MountScanOffsets`].
#[inline(always)]
pub(crate) fn mount_scan_offsets() -> MountScanOffsets {
    MountScanOffsets {
        sb_mounts: offset(&SB_S_MOUNTS_OFFSET) as u64,
        sb_link: offset(&MOUNT_SB_LINK_OFFSET) as u64,
        is_list: offset(&SB_MOUNTS_LIST) != 0,
        mount_ns: offset(&MOUNT_MNT_NS_OFFSET) as u64,
        mount_mnt: offset(&MOUNT_MNT_OFFSET) as u64,
        mnt_root: offset(&VFSMOUNT_MNT_ROOT_OFFSET) as u64,
        d_parent: offset(&DENTRY_D_PARENT_OFFSET) as u64,
    }
}

// The guard (`guard_kernel.rs`).

/// `file->f_inode`, as an address (0 if it cannot be read).
#[inline(always)]
pub(crate) fn file_inode(file: *const u8) -> u64 {
    read_at::<u64>(file as u64, &FILE_F_INODE_OFFSET).unwrap_or(0)
}

// The guard's kernel file systems (`guard_fs.rs`): which file system an inode is on, the
// cgroup of a cgroup file system's inode, the process of a `/proc/PID` inode.

/// Offset of `s_magic` in `struct super_block`.
#[no_mangle]
static SB_S_MAGIC_OFFSET: u32 = 0;

/// Offset of `i_private` in `struct inode` (a kernfs inode's `struct kernfs_node *`).
#[no_mangle]
static INODE_I_PRIVATE_OFFSET: u32 = 0;

/// Offset of `priv` in `struct kernfs_node` (a cgroup directory's `struct cgroup *`).
#[no_mangle]
static KERNFS_NODE_PRIV_OFFSET: u32 = 0;

/// Offset of `parent` (`__parent` on newer kernels) in `struct kernfs_node`.
#[no_mangle]
static KERNFS_NODE_PARENT_OFFSET: u32 = 0;

/// Offset of `flags` (an `unsigned short`) in `struct kernfs_node`.
#[no_mangle]
static KERNFS_NODE_FLAGS_OFFSET: u32 = 0;

/// Offset of `name` (`__name` on newer kernels; a `const char *`) in `struct kernfs_node`.
#[no_mangle]
static KERNFS_NODE_NAME_OFFSET: u32 = 0;

/// Offset of `vfs_inode` in `struct proc_inode`.
#[no_mangle]
static PROC_INODE_VFS_INODE_OFFSET: u32 = 0;

/// Offset of `pid` (a `struct pid *`, set for the entries of one process) in
/// `struct proc_inode`.
#[no_mangle]
static PROC_INODE_PID_OFFSET: u32 = 0;

/// Offset of `tasks[PIDTYPE_PID].first` in `struct pid`.
#[no_mangle]
static PID_TASKS_OFFSET: u32 = 0;

/// Offset of `pid_links[PIDTYPE_PID]` in `struct task_struct`.
#[no_mangle]
static TASK_PID_LINKS_OFFSET: u32 = 0;

/// `inode->i_sb->s_magic`: the magic number of the file system `inode` is on; 0 if it cannot
/// be read.
#[inline(always)]
pub(crate) fn inode_sb_magic(inode: *const u8) -> u64 {
    let sb = read_at::<u64>(inode as u64, &INODE_I_SB_OFFSET).unwrap_or(0);
    read_at::<u64>(sb, &SB_S_MAGIC_OFFSET).unwrap_or(0)
}

/// `inode->i_private`, as an address.
#[inline(always)]
pub(crate) fn inode_private(inode: u64) -> Option<u64> {
    read_at::<u64>(inode, &INODE_I_PRIVATE_OFFSET)
}

/// `kn->priv`, as an address.
#[inline(always)]
pub(crate) fn kernfs_priv(kn: u64) -> Option<u64> {
    read_at::<u64>(kn, &KERNFS_NODE_PRIV_OFFSET)
}

/// `kn->parent`, as an address (0 for a root).
#[inline(always)]
pub(crate) fn kernfs_parent(kn: u64) -> Option<u64> {
    read_at::<u64>(kn, &KERNFS_NODE_PARENT_OFFSET)
}

/// `kn->flags` (`KERNFS_*` bits; the low four give the node's type).
#[inline(always)]
pub(crate) fn kernfs_flags(kn: u64) -> Option<u16> {
    read_at::<u16>(kn, &KERNFS_NODE_FLAGS_OFFSET)
}

/// `kn->name`, as an address.
#[inline(always)]
pub(crate) fn kernfs_name(kn: u64) -> Option<u64> {
    read_at::<u64>(kn, &KERNFS_NODE_NAME_OFFSET)
}

/// `PROC_I(inode)->pid`, as an address (0 for a `/proc` entry that is not a process's).
#[inline(always)]
pub(crate) fn proc_inode_pid(inode: u64) -> Option<u64> {
    let proc_inode = inode.wrapping_sub(offset(&PROC_INODE_VFS_INODE_OFFSET) as u64);
    read_at::<u64>(proc_inode, &PROC_INODE_PID_OFFSET)
}

/// `pid->numbers[0].nr`: the number of `pid` in the initial pid namespace.
#[inline(always)]
pub(crate) fn pid_number(pid: u64) -> Option<u32> {
    read_at::<u32>(pid, &PID_NR_OFFSET)
}

/// The thread-group id of the task `pid` names (`pid_task(pid, PIDTYPE_PID)->tgid`): 0 if no
/// task holds it any more, `None` if it cannot be read.
#[inline(always)]
pub(crate) fn pid_task_tgid(pid: u64) -> Option<u32> {
    let first = read_at::<u64>(pid, &PID_TASKS_OFFSET)?;
    if first == 0 {
        return Some(0);
    }
    let task = first.wrapping_sub(offset(&TASK_PID_LINKS_OFFSET) as u64);
    read_at::<u32>(task, &TASK_TGID_OFFSET)
}
