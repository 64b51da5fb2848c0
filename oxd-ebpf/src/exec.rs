//! Exec rules: `exec_check` decides every exec, `mmap_file` the executable mappings an exec
//! rule denies.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use oxd_common::{action, fmode, governs, op};

use crate::{
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    maps::{Scratch, EXEC_RULES, SCRATCH},
    offsets,
    path::{by_identity, denied_inode, lookup_path, resolve_path},
};

/// `PROT_EXEC` in `mmap_file`'s `prot`.
const PROT_EXEC: u64 = 4;

/// Decides every exec of a confined task (BPF-LSM, `bprm_check_security`), on the path and
/// identity of the file the kernel is about to execute.
#[lsm(hook = "bprm_check_security")]
fn exec_check(ctx: LsmContext) -> i32 {
    // int bprm_check_security(struct linux_binprm *bprm), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let gate = Gate::open(governs::EXEC);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen for a one-element per-CPU array; deny if it ever does.
        return -EPERM;
    };
    let file = offsets::bprm_file(ctx.arg(0));
    let (verdict, path_len) = decide_exec(&gate, scratch, file, gate.config.exec_default);
    if let Some(mut entry) = start_event(op::EXEC, &gate, &verdict) {
        record_path(entry.as_mut_ptr(), scratch, path_len);
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Mapping a file executable is how the dynamic loader, run as a command
/// (`ld-linux-x86-64.so.2 BINARY`), loads a program without exec'ing it (BPF-LSM,
/// `mmap_file`). A file that an exec rule explicitly denies (by path or identity) cannot be
/// mapped executable either. The default does not apply here: shared libraries are mapped the
/// same way. Only denials are recorded. The kernel's own mappings during an exec (of the
/// program and of its ELF interpreter, both opened with `__FMODE_EXEC`) are not decided again:
/// `bprm_check_security` decided that exec, and a second decision, possibly by a newer policy
/// generation, past the exec's point of no return would kill the process instead of failing
/// the exec.
#[lsm(hook = "mmap_file")]
fn mmap_file(ctx: LsmContext) -> i32 {
    // int mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    //               unsigned long flags), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file.is_null() || prot & PROT_EXEC == 0 {
        return 0;
    }
    if offsets::file_flags(file) & fmode::EXEC_OPEN_FLAG != 0 {
        return 0;
    }
    let gate = Gate::open(governs::EXEC);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    // Only an explicit deny counts: `action::ALLOW` stands in for "no rule".
    let (verdict, path_len) = decide_exec(&gate, scratch, file, action::ALLOW);
    if verdict.decision != action::DENY {
        return 0;
    }
    if let Some(mut entry) = start_event(op::MMAP_EXEC, &gate, &verdict) {
        record_path(entry.as_mut_ptr(), scratch, path_len);
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// The exec rules' verdict on `file` (`default` where no rule matches), and the length of the
/// resolved path to record (0 for none).
#[inline(always)]
fn decide_exec(
    gate: &Gate,
    scratch: *mut Scratch,
    file: *const u8,
    default: u32,
) -> (Verdict, u32) {
    let file_path = offsets::file_path(file);
    if !gate.configured {
        return (Verdict::deny(gate.missing_reason()), 0);
    }
    match resolve_path(file_path, scratch) {
        Ok(len) => {
            let by_path = lookup_path(&EXEC_RULES, scratch, gate.slot, len, default);
            (
                by_identity(denied_inode(file, gate.slot).exec, by_path),
                len,
            )
        }
        Err(failed) => failed,
    }
}
