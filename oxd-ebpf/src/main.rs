//! oxd's kernel programs.
//!
//! - `exec_check` (BPF-LSM, `bprm_check_security`): decides every exec of a confined task on
//!   the path of the file the kernel is about to execute.
//! - `file_open` (BPF-LSM, `file_open`): decides every open of a confined task, for reading
//!   and for writing, on the resolved path of the file being opened.
//! - `connect4` / `connect6` / `sendmsg4` / `sendmsg6` (cgroup `sock_addr` hooks, attached to
//!   the agent's cgroup): decide every `connect`, and every UDP send with a destination, of a
//!   confined task on the destination address, port and protocol.
//!
//! Every decision is sent to user space through the `EVENTS` ring buffer. A failed reservation
//! does not change the decision; it is counted in `COUNTERS[RINGBUF_LOST]`.
//! Whatever cannot be decided exactly (unresolvable or over-long path, missing configuration) is
//! denied and recorded with its reason: fail closed.
#![no_std]
#![no_main]

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel_buf,
    },
    macros::{cgroup_sock_addr, lsm, map},
    maps::{lpm_trie::Key, ring_buf::RingBufEntry, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::{LsmContext, SockAddrContext},
};
use oxd_common::{
    access, action, counter, fmode, governs, mode, op, proto, reason, Config, Event, InodeKey,
    InodeRules, NetRule, PathKey, RuleValue, MAX_CGROUP_DEPTH, MAX_CONFINED_CGROUPS, MAX_NET_RULES,
    MAX_POLICY_SLOTS, PATH_BUF_LEN, PATH_KEY_LEN, PATH_RULE_CAPACITY, RING_BUF_BYTES, RULE_DEFAULT,
    RULE_NONE, SLOT_PREFIX_BITS,
};

const EPERM: i32 = 1;
const PROT_EXEC: u64 = 4;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// Offset of `file` in `struct linux_binprm`, read from the running kernel's BTF and set before
/// load, so the verifier sees a constant.
#[no_mangle]
static BPRM_FILE_OFFSET: u32 = 0;

/// Offset of `f_path` in `struct file`, read from the running kernel's BTF and set before load.
#[no_mangle]
static FILE_F_PATH_OFFSET: u32 = 0;

/// Offset of `f_mode` in `struct file`, read from the running kernel's BTF and set before load.
#[no_mangle]
static FILE_F_MODE_OFFSET: u32 = 0;

/// Offset of `f_flags` in `struct file`, read from the running kernel's BTF and set before load.
#[no_mangle]
static FILE_F_FLAGS_OFFSET: u32 = 0;

/// Offset of `f_inode` in `struct file`, read from the running kernel's BTF and set before load.
#[no_mangle]
static FILE_F_INODE_OFFSET: u32 = 0;

/// Offset of `i_ino` in `struct inode`, read from the running kernel's BTF and set before load.
#[no_mangle]
static INODE_I_INO_OFFSET: u32 = 0;

/// Offset of `i_sb` in `struct inode`, read from the running kernel's BTF and set before load.
#[no_mangle]
static INODE_I_SB_OFFSET: u32 = 0;

/// Offset of `s_dev` in `struct super_block`, read from the running kernel's BTF and set before
/// load.
#[no_mangle]
static SB_S_DEV_OFFSET: u32 = 0;

/// Policy settings, one element per policy slot.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// Confined cgroups (and so every cgroup below them): cgroup id -> policy slot. Replacing a
/// policy repoints this one value, so a decision sees either the old slot or the new one.
#[map]
static CONFINED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONFINED_CGROUPS, 0);

/// Exec rules: longest matching prefix of (slot, the executed file's resolved path).
#[map]
static EXEC_RULES: LpmTrie<PathKey, RuleValue> = LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// File rules for opening to read: longest matching prefix of (slot, resolved path).
#[map]
static FILE_READ_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// File rules for opening to write: longest matching prefix of (slot, resolved path).
#[map]
static FILE_WRITE_RULES: LpmTrie<PathKey, RuleValue> =
    LpmTrie::with_max_entries(PATH_RULE_CAPACITY, 0);

/// Files named by exact deny rules, by (identity, slot): their other names (hard links) are
/// denied too.
#[map]
static DENIED_INODES: HashMap<InodeKey, InodeRules> =
    HashMap::with_max_entries(PATH_RULE_CAPACITY, 0);

/// Network rules: `MAX_NET_RULES` entries per slot, most specific first; the slot's
/// `CONFIG.net_rule_count` entries are valid.
#[map]
static NET_RULES: Array<NetRule> = Array::with_max_entries(MAX_NET_RULES * MAX_POLICY_SLOTS, 0);

/// Decisions for the audit log.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Counters, see `oxd_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[repr(C)]
struct Scratch {
    key: Key<PathKey>,
    buf: [u8; PATH_BUF_LEN],
}

/// Per-CPU scratch space: paths do not fit on the 512-byte stack.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Outcome of a policy lookup.
#[derive(Clone, Copy)]
struct Verdict {
    decision: u32,
    reason: u32,
    rule_id: u32,
}

impl Verdict {
    const fn deny(reason: u32) -> Self {
        Self {
            decision: action::DENY,
            reason,
            rule_id: RULE_DEFAULT,
        }
    }
}

/// [`confined_slot`] of a task that is not confined.
const NOT_CONFINED: u32 = u32::MAX;

/// The policy slot of the current task: that of its cgroup if confined, else that of the
/// nearest confined ancestor (the one a cgroup the agent created inherits), else
/// [`NOT_CONFINED`]. The slot is read once per decision, so one decision sees one generation.
#[inline(always)]
fn confined_slot() -> u32 {
    // SAFETY: helper calls without pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the key and value are plain integers.
    if let Some(slot) = unsafe { CONFINED.get(&cgroup_id) } {
        return *slot;
    }
    // The nearest confined ancestor decides: walk from the deepest level up.
    let mut found = NOT_CONFINED;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: helper call without pointer arguments.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 || ancestor == cgroup_id {
            break;
        }
        // SAFETY: as above.
        if let Some(slot) = unsafe { CONFINED.get(&ancestor) } {
            found = *slot;
        }
        level += 1;
    }
    found
}

/// The configuration of `slot`; `None` if the slot cannot be read or is empty (both fail
/// closed, see [`missing_reason`]).
#[inline(always)]
fn slot_config(slot: u32) -> Option<Config> {
    match CONFIG.get(slot) {
        Some(config) if config.generation != 0 => Some(*config),
        _ => None,
    }
}

/// Why [`slot_config`] found nothing.
#[inline(always)]
fn missing_reason(slot: u32) -> u32 {
    if slot < MAX_POLICY_SLOTS {
        reason::EMPTY_SLOT
    } else {
        reason::NO_CONFIG
    }
}

/// Whether the slot's policy leaves a category alone (not decided, not recorded). An empty or
/// unreadable slot governs everything: it fails closed.
#[inline(always)]
fn ungoverned(config: &Option<Config>, category: u32) -> bool {
    match config {
        Some(config) => config.governs & category == 0,
        None => false,
    }
}

fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only touched by this CPU with preemption disabled.
        unsafe { *counter += 1 };
    }
}

/// Reserves an event, fills the fields every operation has, and returns it to be completed and
/// submitted; counts the loss if the ring buffer is full.
#[inline(always)]
fn start_event(
    op: u32,
    config: &Option<Config>,
    verdict: &Verdict,
    mode: u32,
) -> Option<RingBufEntry<Event>> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::RINGBUF_LOST);
        return None;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: bpf helpers without pointer arguments, and writes into memory we reserved.
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).generation = match config {
            Some(config) => config.generation,
            None => 0,
        };
        (*event).pid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).op = op;
        (*event).decision = verdict.decision;
        (*event).reason = verdict.reason;
        (*event).rule_id = verdict.rule_id;
        (*event).mode = mode;
        (*event).proto = 0;
        (*event).path_len = 0;
        (*event).access = 0;
        (*event)._pad1 = 0;
        (*event).port = 0;
        (*event)._pad0 = 0;
        (*event).addr = [0; 16];
        (*event).path[0] = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    Some(entry)
}

/// The value an enforcing hook returns for a verdict, given the mode.
#[inline(always)]
fn enforced(verdict: &Verdict, mode: u32) -> bool {
    verdict.decision == action::DENY && mode != mode::AUDIT
}

/// Copies the resolved path from the scratch buffer into a reserved event.
#[inline(always)]
fn record_path(event: *mut Event, scratch: *mut Scratch, path_len: u32) {
    if path_len == 0 {
        return;
    }
    // SAFETY: both buffers are PATH_BUF_LEN bytes; the event is ours until submitted.
    unsafe {
        let dst = &mut *addr_of_mut!((*event).path);
        if bpf_probe_read_kernel_buf((*scratch).buf.as_ptr(), dst).is_ok() {
            (*event).path_len = path_len;
        }
    }
}

#[lsm(hook = "bprm_check_security")]
pub fn exec_check(ctx: LsmContext) -> i32 {
    // Respect an earlier LSM's verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let slot = confined_slot();
    if slot == NOT_CONFINED {
        return 0;
    }
    let config = slot_config(slot);
    if ungoverned(&config, governs::EXEC) {
        return 0;
    }
    let current_mode = config.map_or(mode::ENFORCE, |c| c.mode);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen for a one-element per-CPU array; deny if it ever does.
        return -EPERM;
    };
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: the offsets come from this kernel's BTF; the verifier checks both loads against
    // BTF and only accepts them if they land on `linux_binprm.file` and `file.f_path`.
    let (file, file_path) = unsafe {
        let file_offset = read_volatile(&BPRM_FILE_OFFSET) as usize;
        let path_offset = read_volatile(&FILE_F_PATH_OFFSET) as usize;
        let file = *(bprm.add(file_offset).cast::<*const u8>());
        (file, file.add(path_offset).cast::<path>().cast_mut())
    };
    let (verdict, path_len) = match config {
        Some(config) => match resolve_path(file_path, scratch) {
            Ok(len) => {
                let by_path = lookup_path(&EXEC_RULES, scratch, slot, len, config.exec_default);
                (by_identity(denied_inode(file, slot).exec, by_path), len)
            }
            Err(failed) => failed,
        },
        None => (Verdict::deny(missing_reason(slot)), 0),
    };
    if let Some(mut entry) = start_event(op::EXEC, &config, &verdict, current_mode) {
        record_path(entry.as_mut_ptr(), scratch, path_len);
        entry.submit(0);
    }
    // The denial is counted inside the branch: a side effect keeps the compiler from folding
    // the two returns into arithmetic the verifier cannot bound to [-4095, 0].
    if enforced(&verdict, current_mode) {
        count(counter::DENIED);
        return -EPERM;
    }
    0
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let slot = confined_slot();
    if slot == NOT_CONFINED {
        return 0;
    }
    let config = slot_config(slot);
    if ungoverned(&config, governs::FILE) {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    // SAFETY: offsets from this kernel's BTF, checked by the verifier against `struct file`.
    let (f_mode, f_flags, file_path) = unsafe {
        let mode_offset = read_volatile(&FILE_F_MODE_OFFSET) as usize;
        let flags_offset = read_volatile(&FILE_F_FLAGS_OFFSET) as usize;
        let path_offset = read_volatile(&FILE_F_PATH_OFFSET) as usize;
        (
            *(file.add(mode_offset).cast::<u32>()),
            *(file.add(flags_offset).cast::<u32>()),
            file.add(path_offset).cast::<path>().cast_mut(),
        )
    };
    // The kernel opening a file to execute it (the program, its ELF interpreter, a script's
    // interpreter): exec rules decide that, in bprm_check_security.
    if f_mode & fmode::EXEC != 0 || f_flags & fmode::EXEC_OPEN_FLAG != 0 {
        return 0;
    }
    let mut wanted = 0;
    if f_mode & fmode::READ != 0 {
        wanted |= access::READ;
    }
    if f_mode & fmode::WRITE != 0 {
        wanted |= access::WRITE;
    }
    if wanted == 0 {
        // Neither read nor write (e.g. opened for ioctl only): judged as a read.
        wanted = access::READ;
    }
    let current_mode = config.map_or(mode::ENFORCE, |c| c.mode);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    let (verdict, path_len) = match config {
        Some(config) => match resolve_path(file_path, scratch) {
            Ok(len) => (decide_open(&config, scratch, slot, len, wanted, file), len),
            Err(failed) => failed,
        },
        None => (Verdict::deny(missing_reason(slot)), 0),
    };
    if let Some(mut entry) = start_event(op::OPEN, &config, &verdict, current_mode) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe { (*event).access = wanted };
        record_path(event, scratch, path_len);
        entry.submit(0);
    }
    if enforced(&verdict, current_mode) {
        count(counter::DENIED);
        return -EPERM;
    }
    0
}

/// Mapping a file executable is how the dynamic loader, run as a command
/// (`ld-linux-x86-64.so.2 BINARY`), loads a program without exec'ing it. A file that an exec
/// rule explicitly denies (by path or identity) cannot be mapped executable either. The
/// default does not apply here: shared libraries are mapped the same way. Only denials are
/// recorded. The kernel's own mappings during an exec (of the program and of its ELF
/// interpreter, both opened with `__FMODE_EXEC`) are not decided again: bprm_check_security
/// decided that exec, and a second decision, possibly by a newer policy generation, past the
/// exec's point of no return would kill the process instead of failing the exec.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
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
    // SAFETY: offset from this kernel's BTF, checked by the verifier against `struct file`.
    let f_flags = unsafe {
        *(file
            .add(read_volatile(&FILE_F_FLAGS_OFFSET) as usize)
            .cast::<u32>())
    };
    if f_flags & fmode::EXEC_OPEN_FLAG != 0 {
        return 0;
    }
    let slot = confined_slot();
    if slot == NOT_CONFINED {
        return 0;
    }
    let config = slot_config(slot);
    if ungoverned(&config, governs::EXEC) {
        return 0;
    }
    let current_mode = config.map_or(mode::ENFORCE, |c| c.mode);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return -EPERM;
    };
    // SAFETY: offset from this kernel's BTF, checked by the verifier against `struct file`.
    let file_path = unsafe {
        file.add(read_volatile(&FILE_F_PATH_OFFSET) as usize)
            .cast::<path>()
            .cast_mut()
    };
    let (verdict, path_len) = match config {
        Some(_) => match resolve_path(file_path, scratch) {
            Ok(len) => {
                // Only an explicit deny counts: `action::ALLOW` stands in for "no rule".
                let by_path = lookup_path(&EXEC_RULES, scratch, slot, len, action::ALLOW);
                (by_identity(denied_inode(file, slot).exec, by_path), len)
            }
            Err(failed) => failed,
        },
        None => (Verdict::deny(missing_reason(slot)), 0),
    };
    if verdict.decision != action::DENY {
        return 0;
    }
    if let Some(mut entry) = start_event(op::MMAP_EXEC, &config, &verdict, current_mode) {
        record_path(entry.as_mut_ptr(), scratch, path_len);
        entry.submit(0);
    }
    if enforced(&verdict, current_mode) {
        count(counter::DENIED);
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

const NO_INODE_RULES: InodeRules = InodeRules {
    exec: RULE_NONE,
    read: RULE_NONE,
    write: RULE_NONE,
    _pad: 0,
};

/// The exact deny rules that name this file (under any of its names); [`RULE_NONE`] fields
/// where none does. (No `Option` here: its undefined payload makes the compiler read
/// registers the verifier considers uninitialised.)
#[inline(always)]
fn denied_inode(file: *const u8, slot: u32) -> InodeRules {
    // SAFETY: offsets from this kernel's BTF; the verifier checks every load against the BTF
    // types `file`, `inode` and `super_block`.
    let key = unsafe {
        let inode = *(file
            .add(read_volatile(&FILE_F_INODE_OFFSET) as usize)
            .cast::<*const u8>());
        let ino = *(inode
            .add(read_volatile(&INODE_I_INO_OFFSET) as usize)
            .cast::<u64>());
        let sb = *(inode
            .add(read_volatile(&INODE_I_SB_OFFSET) as usize)
            .cast::<*const u8>());
        let dev = *(sb
            .add(read_volatile(&SB_S_DEV_OFFSET) as usize)
            .cast::<u32>());
        InodeKey { ino, dev, slot }
    };
    // SAFETY: plain-data key and value.
    match unsafe { DENIED_INODES.get(&key) } {
        Some(rules) => *rules,
        None => NO_INODE_RULES,
    }
}

/// An exact deny rule naming the file itself is as specific as a rule can be, and deny wins
/// ties: it decides over whatever the path matched.
#[inline(always)]
fn by_identity(denied_rule: u32, by_path: Verdict) -> Verdict {
    if denied_rule == RULE_NONE {
        return by_path;
    }
    Verdict {
        decision: action::DENY,
        reason: reason::RULE,
        rule_id: denied_rule,
    }
}

/// Resolves `file_path` into `scratch.buf` and prepares `scratch.key` for a lookup. Returns the
/// path's length including its NUL, or the fail-closed verdict (with the length to record).
#[inline(always)]
fn resolve_path(file_path: *mut path, scratch: *mut Scratch) -> Result<u32, (Verdict, u32)> {
    // SAFETY: `file_path` is a BTF-checked `struct path *`; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe {
        bpf_d_path(
            file_path,
            (*scratch).buf.as_mut_ptr().cast(),
            PATH_BUF_LEN as u32,
        )
    };
    if len <= 0 {
        return Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    }
    let len = len as u32;
    if len as usize > PATH_KEY_LEN {
        return Err((Verdict::deny(reason::PATH_TOO_LONG), len));
    }
    // SAFETY: copying PATH_KEY_LEN bytes between two per-CPU scratch buffers of ours.
    let copied = unsafe {
        let src = (*scratch).buf.as_ptr();
        let dst = &mut *addr_of_mut!((*scratch).key.data.path);
        bpf_probe_read_kernel_buf(src, dst)
    };
    if copied.is_err() {
        return Err((Verdict::deny(reason::PATH_UNRESOLVED), len));
    }
    Ok(len)
}

/// Looks the prepared path up in a rule trie; the longest matching rule decides.
#[inline(always)]
fn lookup_path(
    rules: &LpmTrie<PathKey, RuleValue>,
    scratch: *mut Scratch,
    slot: u32,
    len: u32,
    default: u32,
) -> Verdict {
    // SAFETY: the key lives in our scratch map and is not aliased elsewhere.
    let key = unsafe {
        (*scratch).key.data.slot = slot as u16;
        (*scratch).key.prefix_len = SLOT_PREFIX_BITS + len * 8;
        &(*scratch).key
    };
    match rules.get(key) {
        Some(rule) => Verdict {
            decision: rule.action,
            reason: reason::RULE,
            rule_id: rule.rule_id,
        },
        None => Verdict {
            decision: default,
            reason: reason::DEFAULT,
            rule_id: RULE_DEFAULT,
        },
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide_sock_addr4(&ctx, op::CONNECT4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide_sock_addr4(&ctx, op::SENDMSG4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide_sock_addr6(&ctx, op::CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide_sock_addr6(&ctx, op::SENDMSG6)
}

#[inline(always)]
fn decide_sock_addr4(ctx: &SockAddrContext, operation: u32) -> i32 {
    // SAFETY: the context is a valid `bpf_sock_addr`; the verifier checks each field access.
    let (ip4, port, protocol) = unsafe {
        let sa = ctx.sock_addr;
        ((*sa).user_ip4, (*sa).user_port, (*sa).protocol)
    };
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    let ip = ip4.to_ne_bytes();
    addr[12] = ip[0];
    addr[13] = ip[1];
    addr[14] = ip[2];
    addr[15] = ip[3];
    decide_connect(operation, &addr, port, protocol)
}

#[inline(always)]
fn decide_sock_addr6(ctx: &SockAddrContext, operation: u32) -> i32 {
    let mut addr = [0u8; 16];
    // SAFETY: as in `connect4`; `user_ip6` must be read one 32-bit word at a time.
    let (port, protocol) = unsafe {
        let sa = ctx.sock_addr;
        let mut i = 0;
        while i < 4 {
            let word = read_volatile(&(*sa).user_ip6[i]).to_ne_bytes();
            addr[i * 4] = word[0];
            addr[i * 4 + 1] = word[1];
            addr[i * 4 + 2] = word[2];
            addr[i * 4 + 3] = word[3];
            i += 1;
        }
        ((*sa).user_port, (*sa).protocol)
    };
    decide_connect(operation, &addr, port, protocol)
}

/// Decides a connect to `addr` (IPv6 or IPv4-mapped) and `port_be` (network byte order in the
/// low 16 bits). Returns 1 to allow and 0 to deny with EPERM.
#[inline(always)]
fn decide_connect(operation: u32, addr: &[u8; 16], port_be: u32, protocol: u32) -> i32 {
    let slot = confined_slot();
    if slot == NOT_CONFINED {
        // The programs are attached to the agent's cgroup, so this only happens if the agent
        // was released while a connect was in flight.
        return 1;
    }
    let config = slot_config(slot);
    if ungoverned(&config, governs::NETWORK) {
        return 1;
    }
    let port = u16::from_be(port_be as u16);
    let proto_bit = match protocol {
        IPPROTO_TCP => proto::TCP,
        IPPROTO_UDP => proto::UDP,
        _ => 0,
    };
    let current_mode = config.map_or(mode::ENFORCE, |c| c.mode);
    let verdict = match config {
        Some(config) => match_net_rules(&config, slot, addr, port, proto_bit),
        None => Verdict::deny(missing_reason(slot)),
    };
    if let Some(mut entry) = start_event(operation, &config, &verdict, current_mode) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).proto = proto_bit;
            (*event).port = port;
            (*event).addr = *addr;
        }
        entry.submit(0);
    }
    if enforced(&verdict, current_mode) {
        count(counter::DENIED);
        return 0;
    }
    1
}

/// State shared with [`net_rule_step`] across `bpf_loop` iterations.
#[repr(C)]
struct NetMatch {
    hi: u64,
    lo: u64,
    port: u32,
    proto_bit: u32,
    base: u32,
    count: u32,
    matched: u32,
    decision: u32,
    rule_id: u32,
}

/// Walks the network rules with `bpf_loop`, so the verifier checks one iteration rather than
/// every one of `MAX_NET_RULES`.
#[inline(always)]
fn match_net_rules(
    config: &Config,
    slot: u32,
    addr: &[u8; 16],
    port: u16,
    proto_bit: u32,
) -> Verdict {
    let mut state = NetMatch {
        hi: u64::from_ne_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]),
        lo: u64::from_ne_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]),
        port: port as u32,
        proto_bit,
        base: slot * MAX_NET_RULES,
        count: config.net_rule_count,
        matched: 0,
        decision: 0,
        rule_id: 0,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = net_rule_step;
    // SAFETY: `state` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe {
        bpf_loop(
            MAX_NET_RULES,
            step as *mut c_void,
            (&mut state as *mut NetMatch).cast(),
            0,
        )
    };
    if ret < 0 {
        return Verdict::deny(reason::NO_CONFIG);
    }
    if state.matched != 0 {
        Verdict {
            decision: state.decision,
            reason: reason::RULE,
            rule_id: state.rule_id,
        }
    } else {
        Verdict {
            decision: config.net_default,
            reason: reason::DEFAULT,
            rule_id: RULE_DEFAULT,
        }
    }
}

/// One `bpf_loop` iteration: returns 1 to stop (a match, or past the last rule), 0 to go on.
#[inline(never)]
extern "C" fn net_rule_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `NetMatch` that `match_net_rules` passed to `bpf_loop`.
    let state = unsafe { &mut *ctx.cast::<NetMatch>() };
    let index = index as u32;
    if index >= state.count {
        return 1;
    }
    let Some(rule) = NET_RULES.get(state.base + index) else {
        return 1;
    };
    let half = |bytes: &[u8; 16], start: usize| {
        let mut out = [0u8; 8];
        out.copy_from_slice(&bytes[start..start + 8]);
        u64::from_ne_bytes(out)
    };
    let port_ok = state.port >= rule.port_lo as u32 && state.port <= rule.port_hi as u32;
    let matches = rule.proto & state.proto_bit != 0
        && port_ok
        && state.hi & half(&rule.mask, 0) == half(&rule.addr, 0)
        && state.lo & half(&rule.mask, 8) == half(&rule.addr, 8);
    if matches {
        state.matched = 1;
        state.decision = rule.action;
        state.rule_id = rule.rule_id;
        return 1;
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
