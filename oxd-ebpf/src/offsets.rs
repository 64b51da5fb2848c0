//! The kernel structs the LSM hooks read, through offsets taken from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE field relocations and struct layouts differ between kernel builds
//! (`file.f_path` is at 16 on 6.1 and at 64 on 6.12), so user space reads each offset from
//! /sys/kernel/btf/vmlinux and sets the globals below before load (`override_global`, by these
//! symbol names). Read-only globals are constants to the verifier, which then checks every
//! load below against the BTF type of the field it lands on, and rejects the program if it
//! lands elsewhere.
//!
//! The accessors take the `struct file *` or `struct linux_binprm *` a hook was given. Loads
//! through such BTF pointers are checked by the verifier and cannot fault (the kernel turns
//! them into exception-handled loads), so they are safe functions.

use core::ptr::read_volatile;

use aya_ebpf::bindings::path;

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

/// The identity of the file: (`file->f_inode->i_ino`, `file->f_inode->i_sb->s_dev`).
#[inline(always)]
pub(crate) fn file_identity(file: *const u8) -> (u64, u32) {
    // SAFETY: BTF-checked loads of `file.f_inode`, `inode.i_ino`, `inode.i_sb` and
    // `super_block.s_dev` (module docs).
    unsafe {
        let inode = *(file.add(offset(&FILE_F_INODE_OFFSET)).cast::<*const u8>());
        let ino = *(inode.add(offset(&INODE_I_INO_OFFSET)).cast::<u64>());
        let sb = *(inode.add(offset(&INODE_I_SB_OFFSET)).cast::<*const u8>());
        let dev = *(sb.add(offset(&SB_S_DEV_OFFSET)).cast::<u32>());
        (ino, dev)
    }
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

/// `path->dentry`.
#[inline(always)]
pub(crate) fn path_dentry(path: *const path) -> *const u8 {
    // SAFETY: a BTF-checked load of `path.dentry` (module docs).
    unsafe {
        *(path
            .cast::<u8>()
            .add(offset(&PATH_DENTRY_OFFSET))
            .cast::<*const u8>())
    }
}

/// `dentry->d_inode`: null for a name that does not exist (yet).
#[inline(always)]
pub(crate) fn dentry_inode(dentry: *const u8) -> *const u8 {
    // SAFETY: a BTF-checked load of `dentry.d_inode` (module docs).
    unsafe {
        *(dentry
            .add(offset(&DENTRY_D_INODE_OFFSET))
            .cast::<*const u8>())
    }
}

/// The identity of an inode: (`inode->i_ino`, `inode->i_sb->s_dev`).
#[inline(always)]
pub(crate) fn inode_identity(inode: *const u8) -> (u64, u32) {
    // SAFETY: BTF-checked loads of `inode.i_ino`, `inode.i_sb` and `super_block.s_dev`.
    unsafe {
        let ino = *(inode.add(offset(&INODE_I_INO_OFFSET)).cast::<u64>());
        let sb = *(inode.add(offset(&INODE_I_SB_OFFSET)).cast::<*const u8>());
        let dev = *(sb.add(offset(&SB_S_DEV_OFFSET)).cast::<u32>());
        (ino, dev)
    }
}

/// Offset of `mnt` (the `struct vfsmount`) in `struct mount`.
#[no_mangle]
static MOUNT_MNT_OFFSET: u32 = 0;

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

/// `path->mnt`, as an address.
#[inline(always)]
pub(crate) fn path_mnt(path: *const path) -> u64 {
    // SAFETY: a BTF-checked load of `path.mnt` (module docs).
    unsafe {
        *(path
            .cast::<u8>()
            .add(offset(&PATH_MNT_OFFSET))
            .cast::<u64>())
    }
}
