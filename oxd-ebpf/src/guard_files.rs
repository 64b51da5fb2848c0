//! The guard over oxd's own files: its binary, the policy files it enforces, its audit log and
//! the daemon's state directory (the `PROTECTED_FILES` map, filled by user space). Whatever a
//! policy's file rules say, a confined task may not open one of them for writing, remove,
//! rename, truncate, chmod or chown it, nor create, remove or rename anything in a protected
//! directory, nor write to a file in one. Files are known by identity (device and inode), so
//! a hard link, bind mount or other path to the same file is the same file; a protected
//! directory's entries are known by their parent (`d_parent`), so files that appear in it
//! later (a rotated audit log, a state file replaced by rename) are covered too.
//!
//! Each check runs first in the program of its hook (`file::file_open`, the `write` and `attr`
//! programs), after the previous verdict and before the policy's rules, and checks its
//! cheapest condition first: these run on every open and every change to the file system on
//! the host. (One program per hook, not one per concern: each program attached or detached is
//! a trampoline rebuilt, which is most of what starting and stopping oxd costs the kernel.)

use aya_ebpf::{bindings::path, helpers::bpf_get_current_pid_tgid, programs::LsmContext};
use oxd_common::{fmode, op, InodeKey, PROTECTED_DIR, PROTECTED_FILE};

use crate::{
    guard,
    maps::{PROTECTED_FILES, REGISTRAR},
    offsets,
};

/// What the record's `detail` says was attempted.
mod attempt {
    pub(super) const OPEN_WRITE: u32 = 1;
    pub(super) const UNLINK: u32 = 2;
    pub(super) const RMDIR: u32 = 3;
    pub(super) const RENAME: u32 = 4;
    pub(super) const TRUNCATE: u32 = 5;
    pub(super) const CHMOD: u32 = 6;
    pub(super) const CHOWN: u32 = 7;
    pub(super) const CREATE: u32 = 8;
    pub(super) const LINK: u32 = 9;
    pub(super) const XATTR: u32 = 10;
}

/// The `PROTECTED_FILES` flags of `inode` (0: not protected, or a null inode).
#[inline(always)]
fn flags(inode: *const u8) -> u32 {
    if inode.is_null() {
        return 0;
    }
    let (ino, dev) = offsets::inode_identity(inode);
    let key = InodeKey { ino, dev, slot: 0 };
    // SAFETY: plain-data key and value.
    unsafe { PROTECTED_FILES.get(key) }.map_or(0, |f| *f)
}

/// Whether the name `dentry` is protected: its file is, or the directory it is in is a
/// protected directory. A negative dentry (a name about to be created) has only its parent.
#[inline(always)]
fn protected(dentry: *const u8) -> bool {
    if dentry.is_null() {
        return false;
    }
    if flags(offsets::dentry_inode(dentry)) & (PROTECTED_FILE | PROTECTED_DIR) != 0 {
        return true;
    }
    let parent = offsets::dentry_parent(dentry);
    !parent.is_null() && flags(offsets::dentry_inode(parent)) & PROTECTED_DIR != 0
}

/// While oxd registers a file (`REGISTRAR`), its own open of that file puts the file's identity
/// as the hooks see it (the inode of the opened path's dentry) into `PROTECTED_FILES`; a
/// registration without flags takes it out (a rotated audit log part oxd deletes).
#[inline(always)]
fn register(file: *const u8) {
    let Some(registration) = REGISTRAR.get(0) else {
        return;
    };
    let registration = *registration;
    let tgid = bpf_get_current_pid_tgid() >> 32;
    if registration == 0 || registration >> 32 != tgid {
        return;
    }
    let inode = offsets::dentry_inode(offsets::path_dentry(offsets::file_path(file)));
    if inode.is_null() {
        return;
    }
    let (ino, dev) = offsets::inode_identity(inode);
    let key = InodeKey { ino, dev, slot: 0 };
    let flags = registration as u32;
    if flags == 0 {
        let _ = PROTECTED_FILES.remove(key);
    } else {
        let _ = PROTECTED_FILES.insert(key, flags, 0);
    }
}

/// Denies `attempt` on `dentry` for a confined task if the name is protected.
#[inline(always)]
fn check(dentry: *const u8, attempt: u32) -> i32 {
    let gate = guard::gate();
    if !gate.decide || !protected(dentry) {
        return 0;
    }
    guard::deny(&gate, op::PROTECTED_WRITE, attempt, 0)
}

/// Opening one of oxd's files for writing (BPF-LSM `file_open`).
#[inline(always)]
pub(crate) fn open(ctx: &LsmContext) -> i32 {
    // int file_open(struct file *file), then the previous LSM's verdict.
    let file: *const u8 = ctx.arg(0);
    register(file);
    if offsets::file_mode(file) & fmode::WRITE == 0 {
        return 0;
    }
    check(
        offsets::path_dentry(offsets::file_path(file)),
        attempt::OPEN_WRITE,
    )
}

/// Removing a name (BPF-LSM `path_unlink`).
#[inline(always)]
pub(crate) fn unlink(ctx: &LsmContext) -> i32 {
    // int path_unlink(const struct path *dir, struct dentry *dentry), then the previous verdict.
    check(ctx.arg(1), attempt::UNLINK)
}

/// Removing a directory (BPF-LSM `path_rmdir`).
#[inline(always)]
pub(crate) fn rmdir(ctx: &LsmContext) -> i32 {
    // int path_rmdir(const struct path *dir, struct dentry *dentry), then the previous verdict.
    check(ctx.arg(1), attempt::RMDIR)
}

/// Renaming: either end may be protected (moving a protected file away, or another file over
/// it or into a protected directory) (BPF-LSM `path_rename`).
#[inline(always)]
pub(crate) fn rename(ctx: &LsmContext) -> i32 {
    // int path_rename(const struct path *old_dir, struct dentry *old_dentry,
    //                 const struct path *new_dir, struct dentry *new_dentry,
    //                 unsigned int flags), then the previous verdict.
    let denied = check(ctx.arg(1), attempt::RENAME);
    if denied != 0 {
        return denied;
    }
    check(ctx.arg(3), attempt::RENAME)
}

/// Truncating (BPF-LSM `path_truncate`).
#[inline(always)]
pub(crate) fn truncate(ctx: &LsmContext) -> i32 {
    // int path_truncate(const struct path *path), then the previous verdict.
    let file_path: *const path = ctx.arg(0);
    check(offsets::path_dentry(file_path), attempt::TRUNCATE)
}

/// Changing the mode (BPF-LSM `path_chmod`).
#[inline(always)]
pub(crate) fn chmod(ctx: &LsmContext) -> i32 {
    // int path_chmod(const struct path *path, umode_t mode), then the previous verdict.
    let file_path: *const path = ctx.arg(0);
    check(offsets::path_dentry(file_path), attempt::CHMOD)
}

/// Changing the owner (BPF-LSM `path_chown`).
#[inline(always)]
pub(crate) fn chown(ctx: &LsmContext) -> i32 {
    // int path_chown(const struct path *path, kuid_t uid, kgid_t gid), then the previous
    // verdict.
    let file_path: *const path = ctx.arg(0);
    check(offsets::path_dentry(file_path), attempt::CHOWN)
}

/// Creating a file, device node or socket in a protected directory (BPF-LSM `path_mknod`, also
/// the first step of `open(O_CREAT)`).
#[inline(always)]
pub(crate) fn mknod(ctx: &LsmContext) -> i32 {
    // int path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
    //                unsigned int dev), then the previous verdict.
    check(ctx.arg(1), attempt::CREATE)
}

/// Creating a directory in a protected directory (BPF-LSM `path_mkdir`).
#[inline(always)]
pub(crate) fn mkdir(ctx: &LsmContext) -> i32 {
    // int path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode), then the
    // previous verdict.
    check(ctx.arg(1), attempt::CREATE)
}

/// Creating a symbolic link in a protected directory (BPF-LSM `path_symlink`).
#[inline(always)]
pub(crate) fn symlink(ctx: &LsmContext) -> i32 {
    // int path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name),
    // then the previous verdict.
    check(ctx.arg(1), attempt::CREATE)
}

/// Making a hard link in a protected directory (BPF-LSM `path_link`). A link elsewhere to a
/// protected file is allowed: it is the same file, protected under every name.
#[inline(always)]
pub(crate) fn link(ctx: &LsmContext) -> i32 {
    // int path_link(struct dentry *old_dentry, const struct path *new_dir,
    //               struct dentry *new_dentry), then the previous verdict.
    check(ctx.arg(2), attempt::LINK)
}

/// Setting an extended attribute (a file capability, an ACL through `system.posix_acl_*` on
/// 6.1, an LSM label) (BPF-LSM `inode_setxattr`; ACLs from 6.2 go through `inode_set_acl`,
/// which `[file]` rules decide, and need ownership or `CAP_FOWNER` as chmod does).
#[inline(always)]
pub(crate) fn setxattr(ctx: &LsmContext) -> i32 {
    // int inode_setxattr(struct user_namespace * (6.1) | struct mnt_idmap * (6.3+),
    //                    struct dentry *dentry, const char *name, const void *value,
    //                    size_t size, int flags), then the previous verdict.
    check(ctx.arg(1), attempt::XATTR)
}

/// Removing an extended attribute (BPF-LSM `inode_removexattr`).
#[inline(always)]
pub(crate) fn removexattr(ctx: &LsmContext) -> i32 {
    // int inode_removexattr(struct user_namespace * | struct mnt_idmap *, struct dentry *,
    //                       const char *name), then the previous verdict.
    check(ctx.arg(1), attempt::XATTR)
}
