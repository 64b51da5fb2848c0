//! File rules: `file_open` decides every open, for reading and for writing (after the guard's
//! checks and the mount namespace check, which run in the same program).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use oxd_common::{access, action, fmode, governs, op, reason, Config};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    guard_files, guard_kernel,
    maps::{Scratch, FILE_READ_RULES, FILE_WRITE_RULES, SCRATCH},
    ns, offsets,
    path::{by_identity, denied_inode, lookup_path, resolve_path},
};

/// Decides every open of a confined task (BPF-LSM, `file_open`), for reading and for writing,
/// on the resolved path and the identity of the file being opened.
#[lsm(hook = "file_open")]
fn file_open(ctx: LsmContext) -> i32 {
    // int file_open(struct file *file), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // Whatever the policy: oxd's own files, block devices, files of another mount namespace
    // (one program per hook: see `crate::guard_files`).
    let guarded = guard_files::open(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let guarded = guard_kernel::block_device_write(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let guarded = ns::foreign_open(&ctx);
    if guarded != 0 {
        return guarded;
    }
    let gate = Gate::open(governs::FILE);
    if !gate.decide {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    let f_mode = offsets::file_mode(file);
    let f_flags = offsets::file_flags(file);
    let file_path = offsets::file_path(file);
    // The kernel opening a file to execute it (the program, its ELF interpreter, a script's
    // interpreter): exec rules decide that, in bprm_check_security.
    if f_mode & fmode::EXEC != 0 || f_flags & fmode::EXEC_OPEN_FLAG != 0 {
        return 0;
    }
    let mut wanted = 0;
    if f_mode & fmode::READ != 0 {
        wanted |= access::READ;
    }
    // An `O_TRUNC` open empties the file even when opened read-only: a write.
    if f_mode & fmode::WRITE != 0 || f_flags & fmode::TRUNC_OPEN_FLAG != 0 {
        wanted |= access::WRITE;
    }
    if wanted == 0 {
        // Neither read nor write (e.g. opened for ioctl only): judged as a read.
        wanted = access::READ;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let (verdict, path_len) = if gate.configured {
        match resolve_path(file_path, scratch) {
            Ok(len) => (
                decide_open(&gate.config, scratch, gate.slot, len, wanted, file),
                len,
            ),
            Err(failed) => failed,
        }
    } else {
        (Verdict::deny(gate.missing_reason()), 0)
    };
    if let Some(mut entry) = start_event(op::OPEN, &gate, &verdict) {
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

/// An open is allowed only if every access it asks for is allowed. A deny decides (the write
/// check first); otherwise the write rule, else the read rule, is the one reported.
#[inline(always)]
fn decide_open(
    config: &Config,
    scratch: *mut Scratch,
    slot: u32,
    len: u32,
    wanted: u32,
    file: *const u8,
) -> Verdict {
    let denied = denied_inode(file, slot);
    let want_read = wanted & access::READ != 0;
    let want_write = wanted & access::WRITE != 0;
    // Plain values rather than `Option`s, for the verifier's sake (see `denied_inode`).
    let mut read = Verdict::deny(reason::NO_CONFIG);
    let mut write = Verdict::deny(reason::NO_CONFIG);
    if want_read {
        let by_path = lookup_path(
            &FILE_READ_RULES,
            scratch,
            slot,
            len,
            config.file_read_default,
        );
        read = by_identity(denied.read, by_path);
    }
    if want_write {
        let by_path = lookup_path(
            &FILE_WRITE_RULES,
            scratch,
            slot,
            len,
            config.file_write_default,
        );
        write = by_identity(denied.write, by_path);
    }
    if want_write && write.decision == action::DENY {
        return write;
    }
    if want_read && read.decision == action::DENY {
        return read;
    }
    if want_write {
        return write;
    }
    read
}
