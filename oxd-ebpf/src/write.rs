//! Changes to the file system: every operation that changes it is a write to the path(s) it
//! changes, decided by the file write rules (BPF-LSM `path_*` hooks, kernels built with
//! `CONFIG_SECURITY_PATH`, as Debian's are).
//!
//! Each hook is given the changed name as a `struct path *` (truncate, chmod, chown), or as a
//! directory and a name in it (the rest). `bpf_d_path` is not allowed in these hooks on 6.1
//! (they are not in its set of sleepable LSM hooks; on 6.12 all but `path_mknod` are), so the
//! path is built by hand on both kernels, as `d_path` builds it: the names from the changed
//! dentry up through its mounts to the root of the mount tree (`path::resolve_by_walk`).
//! The source of a rename or a link must be allowed for reading too: a file that cannot be read
//! cannot be moved or linked to a name that can. Each end of a two-ended operation is decided
//! and recorded on its own (`rename-from` and `rename-to`, `link-from` and `link-to`); the
//! operation is refused if either end is denied.

use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};
use oxd_common::{access, action, governs, op, Config, InodeRules, ANCESTOR_SLOT_BIT};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    guard_files,
    maps::{Scratch, FILE_READ_RULES, FILE_WRITE_RULES, SCRATCH},
    offsets,
    path::{by_identity, denied_dentry, lookup_path, resolve_by_walk},
};

/// `S_IFMT` and `S_IFREG` of a mode.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

/// No exact deny rule names a file that does not exist yet.
const NO_RULES: InodeRules = InodeRules {
    exec: oxd_common::RULE_NONE,
    read: oxd_common::RULE_NONE,
    write: oxd_common::RULE_NONE,
    _pad: 0,
};

/// `RENAME_EXCHANGE`: both names stay, swapped, so each end is a source.
const RENAME_EXCHANGE: u32 = 2;

/// Decides removing a name (`unlink`), BPF-LSM `path_unlink`.
#[lsm(hook = "path_unlink")]
fn path_unlink(ctx: LsmContext) -> i32 {
    // int path_unlink(const struct path *dir, struct dentry *dentry), then the previous verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::unlink(&ctx);
    if guarded != 0 {
        return guarded;
    }
    change_name(ctx.arg(0), ctx.arg(1), op::UNLINK, 0)
}

/// Decides removing a directory, BPF-LSM `path_rmdir`.
#[lsm(hook = "path_rmdir")]
fn path_rmdir(ctx: LsmContext) -> i32 {
    // int path_rmdir(const struct path *dir, struct dentry *dentry), then the previous verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::rmdir(&ctx);
    if guarded != 0 {
        return guarded;
    }
    change_name(ctx.arg(0), ctx.arg(1), op::RMDIR, 0)
}

/// Decides creating a directory, BPF-LSM `path_mkdir`.
#[lsm(hook = "path_mkdir")]
fn path_mkdir(ctx: LsmContext) -> i32 {
    // int path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode), then the
    // previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::mkdir(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let mode: u64 = ctx.arg(2);
    change_name(ctx.arg(0), ctx.arg(1), op::MKDIR, mode as u32 & 0xffff)
}

/// Decides creating a file: a regular one (`open` with `O_CREAT` of a new file, `mknod` of a
/// regular file) as `create`, anything else (FIFO, socket, device) as `mknod`; BPF-LSM
/// `path_mknod`.
#[lsm(hook = "path_mknod")]
fn path_mknod(ctx: LsmContext) -> i32 {
    // int path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
    //                unsigned int dev), then the previous verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::mknod(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let mode: u64 = ctx.arg(2);
    let mode = mode as u32 & 0xffff;
    let kind = mode & S_IFMT;
    let op = if kind == 0 || kind == S_IFREG {
        op::CREATE
    } else {
        op::MKNOD
    };
    let dir: *mut path = ctx.arg(0);
    let dentry: *const u8 = ctx.arg(1);
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let decided = if gate.configured {
        judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(dir), dentry as u64, scratch),
            NO_RULES,
            access::WRITE,
        )
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op, &gate, &decided, access::WRITE, mode);
    if refuse(&decided.0, &gate) {
        return -EPERM;
    }
    0
}

/// Decides creating a symbolic link (its new name; what it points to is decided when it is
/// followed), BPF-LSM `path_symlink`.
#[lsm(hook = "path_symlink")]
fn path_symlink(ctx: LsmContext) -> i32 {
    // int path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name),
    // then the previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::symlink(&ctx);
    if guarded != 0 {
        return guarded;
    }
    change_name(ctx.arg(0), ctx.arg(1), op::SYMLINK, 0)
}

/// Decides `truncate(2)` (and, on kernels before 6.2, the truncation of an `O_TRUNC` open,
/// which `file_open` has already decided as a write), BPF-LSM `path_truncate`.
#[lsm(hook = "path_truncate")]
fn path_truncate(ctx: LsmContext) -> i32 {
    // int path_truncate(const struct path *path), then the previous verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::truncate(&ctx);
    if guarded != 0 {
        return guarded;
    }
    change_path(ctx.arg(0), op::TRUNCATE, 0)
}

/// Decides changing a file's mode, BPF-LSM `path_chmod`.
#[lsm(hook = "path_chmod")]
fn path_chmod(ctx: LsmContext) -> i32 {
    // int path_chmod(const struct path *path, umode_t mode), then the previous verdict.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::chmod(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let mode: u64 = ctx.arg(1);
    change_path(ctx.arg(0), op::CHMOD, mode as u32 & 0xffff)
}

/// Decides changing a file's owner or group, BPF-LSM `path_chown`.
#[lsm(hook = "path_chown")]
fn path_chown(ctx: LsmContext) -> i32 {
    // int path_chown(const struct path *path, kuid_t uid, kgid_t gid), then the previous
    // verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::chown(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let uid: u64 = ctx.arg(1);
    change_path(ctx.arg(0), op::CHOWN, uid as u32)
}

/// Decides both ends of a rename, BPF-LSM `path_rename`: the old name as a read and a write
/// (`rename-from`), the new name as a write (`rename-to`; a read and a write too for
/// `RENAME_EXCHANGE`, which moves the file there to the old name).
#[lsm(hook = "path_rename")]
fn path_rename(ctx: LsmContext) -> i32 {
    // int path_rename(const struct path *old_dir, struct dentry *old_dentry,
    //                 const struct path *new_dir, struct dentry *new_dentry,
    //                 unsigned int flags), then the previous verdict.
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::rename(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let flags: u64 = ctx.arg(4);
    let flags = flags as u32;
    let old_dir: *mut path = ctx.arg(0);
    let old_dentry: *const u8 = ctx.arg(1);
    let new_dir: *mut path = ctx.arg(2);
    let new_dentry: *const u8 = ctx.arg(3);
    let source = access::READ | access::WRITE;
    let from = if gate.configured {
        let denied = denied_dentry(old_dentry, gate.slot);
        let from = judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(old_dir), old_dentry as u64, scratch),
            denied,
            source,
        );
        keep_denied_paths(&gate, scratch, from)
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op::RENAME_FROM, &gate, &from, source, flags);
    let wanted = if flags & RENAME_EXCHANGE != 0 {
        source
    } else {
        access::WRITE
    };
    let to = if gate.configured {
        let denied = denied_dentry(new_dentry, gate.slot);
        judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(new_dir), new_dentry as u64, scratch),
            denied,
            wanted,
        )
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op::RENAME_TO, &gate, &to, wanted, flags);
    let refuse_from = refuse(&from.0, &gate);
    if refuse(&to.0, &gate) || refuse_from {
        return -EPERM;
    }
    0
}

/// Decides both ends of a hard link, BPF-LSM `path_link`: the existing name as a read and a
/// write (`link-from`), the new name as a write (`link-to`).
#[lsm(hook = "path_link")]
fn path_link(ctx: LsmContext) -> i32 {
    // int path_link(struct dentry *old_dentry, const struct path *new_dir,
    //               struct dentry *new_dentry), then the previous verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // oxd's own files first, whatever the policy.
    let guarded = guard_files::link(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let old_dentry: *const u8 = ctx.arg(0);
    let new_dir: *mut path = ctx.arg(1);
    let new_dentry: *const u8 = ctx.arg(2);
    let source = access::READ | access::WRITE;
    let from = if gate.configured {
        let denied = denied_dentry(old_dentry, gate.slot);
        let from = judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(new_dir), old_dentry as u64, scratch),
            denied,
            source,
        );
        keep_denied_paths(&gate, scratch, from)
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op::LINK_FROM, &gate, &from, source, 0);
    let to = if gate.configured {
        let denied = denied_dentry(new_dentry, gate.slot);
        judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(new_dir), new_dentry as u64, scratch),
            denied,
            access::WRITE,
        )
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op::LINK_TO, &gate, &to, access::WRITE, 0);
    let refuse_from = refuse(&from.0, &gate);
    if refuse(&to.0, &gate) || refuse_from {
        return -EPERM;
    }
    0
}

/// A change to the name `dentry` in the directory `dir`: decided as a write, recorded as `op`.
#[inline(always)]
fn change_name(dir: *mut path, dentry: *const u8, op: u32, detail: u32) -> i32 {
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let decided = if gate.configured {
        let denied = denied_dentry(dentry, gate.slot);
        judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(dir), dentry as u64, scratch),
            denied,
            access::WRITE,
        )
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op, &gate, &decided, access::WRITE, detail);
    if refuse(&decided.0, &gate) {
        return -EPERM;
    }
    0
}

/// A change to the file at `file_path`: decided as a write, recorded as `op`.
#[inline(always)]
fn change_path(file_path: *mut path, op: u32, detail: u32) -> i32 {
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let decided = if gate.configured {
        let dentry = offsets::path_dentry(file_path);
        let denied = denied_dentry(dentry, gate.slot);
        judge(
            &gate,
            scratch,
            resolve_by_walk(offsets::path_mnt(file_path), dentry as u64, scratch),
            denied,
            access::WRITE,
        )
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    record(op, &gate, &decided, access::WRITE, detail);
    if refuse(&decided.0, &gate) {
        return -EPERM;
    }
    0
}

/// A rename may not move a directory above a path that a deny rule names (that would move what
/// the rule denies out of its reach): such a source (of a rename, or of a link, which the
/// kernel refuses for directories anyway) is denied by that rule (the compiled policy keys
/// those directories in the write trie's ancestor namespace).
#[inline(always)]
fn keep_denied_paths(
    gate: &Gate,
    scratch: *mut Scratch,
    decided: (Verdict, u32),
) -> (Verdict, u32) {
    let (verdict, len) = decided;
    if verdict.decision != action::ALLOW || len == 0 {
        return decided;
    }
    let above = lookup_path(
        &FILE_WRITE_RULES,
        scratch,
        gate.slot | u32::from(ANCESTOR_SLOT_BIT),
        len,
        action::ALLOW,
    );
    if above.decision == action::DENY {
        return (above, len);
    }
    decided
}

/// The verdict on a resolved name (or the fail-closed verdict of its resolution), and the
/// length of the path to record.
#[inline(always)]
fn judge(
    gate: &Gate,
    scratch: *mut Scratch,
    resolved: Result<u32, (Verdict, u32)>,
    denied: InodeRules,
    wanted: u32,
) -> (Verdict, u32) {
    match resolved {
        Ok(len) => (
            decide_access(&gate.config, scratch, gate.slot, len, wanted, denied),
            len,
        ),
        Err(failed) => failed,
    }
}

/// As for an open (`file::decide_open`): allowed only if every access `wanted` is; a deny
/// decides (the write check first); otherwise the write rule is the one reported.
#[inline(always)]
fn decide_access(
    config: &Config,
    scratch: *mut Scratch,
    slot: u32,
    len: u32,
    wanted: u32,
    denied: InodeRules,
) -> Verdict {
    let by_path = lookup_path(
        &FILE_WRITE_RULES,
        scratch,
        slot,
        len,
        config.file_write_default,
    );
    let write = by_identity(denied.write, by_path);
    if write.decision == action::DENY || wanted & access::READ == 0 {
        return write;
    }
    let by_path = lookup_path(
        &FILE_READ_RULES,
        scratch,
        slot,
        len,
        config.file_read_default,
    );
    let read = by_identity(denied.read, by_path);
    if read.decision == action::DENY {
        return read;
    }
    write
}

/// Sends the record of one decided name.
#[inline(always)]
fn record(op: u32, gate: &Gate, decided: &(Verdict, u32), wanted: u32, detail: u32) {
    if let Some(mut entry) = start_event(op, gate, &decided.0) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).access = wanted;
            (*event).detail = detail;
        }
        record_path(event, decided.1);
        entry.submit(0);
    }
}
