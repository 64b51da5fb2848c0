//! Exec rules: `exec_check` decides every exec; `mmap_file` and `file_mprotect` decide every
//! executable mapping of a file (`mmap` or `mprotect` with `PROT_EXEC`) by the same rules.

use core::ptr::addr_of_mut;

use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, macros::lsm, programs::LsmContext};
use oxd_common::{action, fmode, governs, mode, op, reason, MappedFile, PATH_KEY_LEN};

use crate::{
    budget,
    confine::Gate,
    event::{record_path, refuse, start_event, Verdict, EPERM},
    maps::{Scratch, EXEC_RULES, MAPPED_FILE, MAPPED_FILES, SCRATCH},
    offsets,
    path::{by_identity, denied_inode, lookup_path, resolve_path},
};

/// `PROT_EXEC` in `mmap_file`'s and `file_mprotect`'s `prot`.
const PROT_EXEC: u64 = 4;

/// `VM_EXEC` in `vm_area_struct.vm_flags`: the mapping is executable already.
const VM_EXEC: u64 = 4;

/// `S_PRIVATE` in `inode.i_flags`: a kernel-internal file.
const S_PRIVATE: u32 = 0x200;

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
    let (mut verdict, path_len) = decide_exec(&gate, scratch, file, gate.config.exec_default);
    // An exec the rules allow takes a unit of the `[exec] budget`, if there is one.
    let budget = gate.config.exec_budget;
    if verdict.decision == action::ALLOW
        && budget != 0
        && !budget::take(&gate, u16::try_from(budget).unwrap_or(u16::MAX))
    {
        verdict = Verdict {
            decision: action::DENY,
            reason: reason::BUDGET,
            rule_id: gate.config.exec_budget_rule,
        };
    }
    if let Some(mut entry) = start_event(op::EXEC, &gate, &verdict) {
        record_path(entry.as_mut_ptr(), path_len);
        entry.submit(0);
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Mapping a file executable is how code gets into a process without an exec: the dynamic
/// loader maps every shared library so (`LD_PRELOAD`, `dlopen` included), and, run as a command
/// (`ld-linux-x86-64.so.2 BINARY`), its program (BPF-LSM, `mmap_file`). Such a mapping is
/// decided by the exec rules, default included, as an exec of the file would be.
///
/// Every other mapping of a file is judged too, but not refused: the decision is kept in
/// `MAPPED_FILES` for `file_mprotect`, where the kernel does not let a program resolve a path
/// (`bpf_d_path` is not allowed there on 6.1 nor 6.12).
///
/// Not decided: anonymous memory (no file, or the kernel's internal files behind shared
/// anonymous and System V shared memory): JITs map it executable. And the kernel's own mappings
/// during an exec (of the program and of its ELF interpreter, both opened with
/// `__FMODE_EXEC`): `bprm_check_security` decided that exec, and a second decision, possibly by
/// a newer policy generation, past the exec's point of no return would kill the process
/// instead of failing the exec.
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
    if file.is_null() || is_kernel_file(file) {
        return 0;
    }
    let gate = Gate::open(governs::EXEC);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let (verdict, path_len) = decide_exec(&gate, scratch, file, gate.config.exec_default);
    remember(file, &gate, &verdict, scratch, path_len);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    if record_mapping(&verdict, &gate) {
        if let Some(mut entry) = start_event(op::MMAP_EXEC, &gate, &verdict) {
            let event = entry.as_mut_ptr();
            record_path(event, path_len);
            // SAFETY: the event is ours until submitted.
            unsafe { (*event).detail = prot as u32 };
            entry.submit(0);
        }
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Making a file mapping executable after the fact (`mmap(PROT_READ)`, then
/// `mprotect(PROT_EXEC)`) is decided as mapping it executable is, by the exec rules (BPF-LSM,
/// `file_mprotect`), through the decision `mmap_file` kept when the file was mapped: this hook
/// cannot resolve paths. A mapping that decision is missing for (made before the task was
/// confined or by another policy generation, or evicted) is denied, fail closed. Only a change
/// that adds execute permission to a file mapping is decided: anonymous memory is not (as in
/// `mmap_file`), and a mapping that is executable already was decided when it became so.
#[lsm(hook = "file_mprotect")]
fn file_mprotect(ctx: LsmContext) -> i32 {
    // int file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
    //                   unsigned long prot), then the previous LSM's verdict.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let vma: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 || offsets::vma_flags(vma) & VM_EXEC != 0 {
        return 0;
    }
    let file = offsets::vma_file(vma);
    if file.is_null() || is_kernel_file(file) {
        return 0;
    }
    let gate = Gate::open(governs::EXEC);
    if !gate.decide {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let (verdict, path_len) = recall(file, &gate, scratch);
    if record_mapping(&verdict, &gate) {
        if let Some(mut entry) = start_event(op::MPROTECT_EXEC, &gate, &verdict) {
            let event = entry.as_mut_ptr();
            record_path(event, path_len);
            // SAFETY: the event is ours until submitted.
            unsafe { (*event).detail = prot as u32 };
            entry.submit(0);
        }
    }
    if refuse(&verdict, &gate) {
        return -EPERM;
    }
    0
}

/// Whether `file` is one whose mappings are not decided: opened by the kernel to execute it
/// (`__FMODE_EXEC`: covered by the exec decision), or a kernel-internal file (`S_PRIVATE`: the
/// memory behind shared anonymous mappings and System V shared memory, anonymous memory).
#[inline(always)]
fn is_kernel_file(file: *const u8) -> bool {
    offsets::file_flags(file) & fmode::EXEC_OPEN_FLAG != 0
        || offsets::file_inode_flags(file) & S_PRIVATE != 0
}

/// Whether a mapping decision is recorded: when denied, and in audit mode also when allowed.
/// An allowed mapping in enforce mode is what every exec of a dynamically linked program does
/// several times over (its libraries): recording those would bury the denials and fill the
/// ring buffer. In audit mode, where a policy is being learnt, every mapping is recorded.
#[inline(always)]
fn record_mapping(verdict: &Verdict, gate: &Gate) -> bool {
    verdict.decision == action::DENY || gate.mode() == mode::AUDIT
}

/// Keeps the decision on `file` for a later `mprotect` of its mappings.
#[inline(always)]
fn remember(file: *const u8, gate: &Gate, verdict: &Verdict, scratch: *mut Scratch, len: u32) {
    let Some(kept) = MAPPED_FILE.get_ptr_mut(0) else {
        return;
    };
    let (ino, dev) = offsets::file_identity(file);
    // SAFETY: a per-CPU buffer of ours and the scratch buffer, both plain data; the key path
    // holds the resolved path when `len` fits it (else only its fail-closed verdict is kept).
    unsafe {
        (*kept).generation = gate.config.generation;
        (*kept).ino = ino;
        (*kept).dev = dev;
        (*kept).slot = gate.slot;
        (*kept).decision = verdict.decision;
        (*kept).reason = verdict.reason;
        (*kept).rule_id = verdict.rule_id;
        (*kept).path_len = 0;
        if len > 0 && len as usize <= PATH_KEY_LEN {
            let dst = &mut *addr_of_mut!((*kept).path);
            if bpf_probe_read_kernel_buf((*scratch).key.data.path.as_ptr(), dst).is_ok() {
                (*kept).path_len = len;
            }
        }
        // By reference: the value is too large to copy onto the BPF stack.
        let value: &MappedFile = &*kept;
        let _ = MAPPED_FILES.insert(file as u64, value, 0);
    }
}

/// The decision `mmap_file` kept on `file` (exact deny rules by identity included), with its
/// path copied into the scratch buffer (and its length, 0 for none). A missing or stale
/// decision (another file, slot or generation) denies, fail closed.
#[inline(always)]
fn recall(file: *const u8, gate: &Gate, scratch: *mut Scratch) -> (Verdict, u32) {
    if !gate.configured {
        return (Verdict::deny(gate.missing_reason()), 0);
    }
    let (ino, dev) = offsets::file_identity(file);
    // SAFETY: plain-data key and value.
    let Some(kept) = (unsafe { MAPPED_FILES.get(file as u64) }) else {
        return (Verdict::deny(reason::MAPPING_UNDECIDED), 0);
    };
    if kept.ino != ino
        || kept.dev != dev
        || kept.slot != gate.slot
        || kept.generation != gate.config.generation
    {
        return (Verdict::deny(reason::MAPPING_UNDECIDED), 0);
    }
    let verdict = Verdict {
        decision: kept.decision,
        reason: kept.reason,
        rule_id: kept.rule_id,
    };
    let mut len = 0;
    if kept.path_len > 0 && kept.path_len as usize <= PATH_KEY_LEN {
        // SAFETY: copying the kept path (PATH_KEY_LEN bytes) into the start of our scratch
        // event's path buffer (PATH_BUF_LEN bytes), where the event's output finds it.
        let copied = unsafe {
            let dst = &mut *addr_of_mut!((*scratch).event.path).cast::<[u8; PATH_KEY_LEN]>();
            bpf_probe_read_kernel_buf(kept.path.as_ptr(), dst)
        };
        if copied.is_ok() {
            len = kept.path_len;
        }
    }
    (verdict, len)
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
