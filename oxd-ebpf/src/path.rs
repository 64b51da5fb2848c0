//! Deciding by file: the resolved path against a rule trie, and the file's identity against the
//! exact deny rules.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::path,
    helpers::{bpf_d_path, bpf_loop, bpf_probe_read_kernel_buf, generated as gen},
    maps::LpmTrie,
};
use oxd_common::{
    action, reason, InodeKey, InodeRules, PathKey, RuleValue, PATH_BUF_LEN, PATH_KEY_LEN,
    RULE_DEFAULT, RULE_NONE, SLOT_PREFIX_BITS,
};

use crate::{
    event::Verdict,
    maps::{Scratch, DENIED_INODES},
    offsets,
};

/// Resolves `file_path` into `scratch.event.path` and prepares `scratch.key` for a lookup. Returns the
/// path's length including its NUL, or the fail-closed verdict (with the length to record).
#[inline(always)]
pub(crate) fn resolve_path(
    file_path: *mut path,
    scratch: *mut Scratch,
) -> Result<u32, (Verdict, u32)> {
    // SAFETY: `file_path` is a BTF-checked `struct path *`; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe {
        bpf_d_path(
            file_path,
            (*scratch).event.path.as_mut_ptr().cast(),
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
        let src = (*scratch).event.path.as_ptr();
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
pub(crate) fn lookup_path(
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
pub(crate) fn denied_inode(file: *const u8, slot: u32) -> InodeRules {
    let (ino, dev) = offsets::file_identity(file);
    let key = InodeKey { ino, dev, slot };
    // SAFETY: plain-data key and value.
    match unsafe { DENIED_INODES.get(key) } {
        Some(rules) => *rules,
        None => NO_INODE_RULES,
    }
}

/// An exact deny rule naming the file itself is as specific as a rule can be, and deny wins
/// ties: it decides over whatever the path matched.
#[inline(always)]
pub(crate) fn by_identity(denied_rule: u32, by_path: Verdict) -> Verdict {
    if denied_rule == RULE_NONE {
        return by_path;
    }
    Verdict {
        decision: action::DENY,
        reason: reason::RULE,
        rule_id: denied_rule,
    }
}

// Paths of names that a `path_*` hook is given as a dentry in a mount, built by hand:
// `bpf_d_path` is not allowed in these hooks on 6.1 (nor in `path_mknod` on 6.12).

/// Longest name of one directory entry (the kernel's `NAME_MAX`).
const NAME_MAX: u32 = 255;

/// Most steps (names and mount crossings) [`resolve_by_walk`] takes before failing closed.
const MAX_WALK: u32 = 48;

/// Where [`resolve_by_walk`] writes a path, backwards from the end:
/// `scratch.event.path[REL_START..=REL_END]`. Paths longer than the span (2047 bytes) fail closed
/// without being recorded; longer than a rule key (253 bytes), closed and recorded.
const REL_START: u32 = 1024;
const SPAN_MASK: u32 = 0x7ff;
const REL_END: u32 = REL_START + SPAN_MASK;

/// `value & SPAN_MASK`, through a volatile read so that the compiler cannot drop the mask as
/// redundant: the verifier only knows the bounds it sees applied to the register it checks.
#[inline(always)]
fn in_span(value: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw const value) & SPAN_MASK }
}

/// Where [`forget`] keeps a value: the last 8 bytes of `scratch.event.path`, past the span.
const SPILL: usize = PATH_BUF_LEN - 8;

/// Stores `value` at the end of `scratch.event.path` and loads it back, masked: the same value, of
/// which the verifier knows only the mask. A value loaded from map memory is an unknown scalar
/// to it, so the states after a loop, whichever iteration left it, are equal and the verifier
/// explores what follows once (not once per iteration).
#[inline(always)]
fn forget(buf: *mut u8, value: u32) -> u32 {
    // SAFETY: a u32 slot at the end of our PATH_BUF_LEN buffer, 4-byte aligned.
    unsafe {
        let slot = buf.add(SPILL).cast::<u32>();
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot) & SPAN_MASK
    }
}

/// Copies the path in `scratch.event.path` (`len` bytes with its NUL) into `scratch.key` for a lookup.
#[inline(always)]
fn prepare_key(scratch: *mut Scratch, len: u32) -> Result<u32, (Verdict, u32)> {
    // SAFETY: copying PATH_KEY_LEN bytes between two per-CPU scratch buffers of ours.
    let copied = unsafe {
        let src = (*scratch).event.path.as_ptr();
        let dst = &mut *addr_of_mut!((*scratch).key.data.path);
        bpf_probe_read_kernel_buf(src, dst)
    };
    if copied.is_err() {
        return Err((Verdict::deny(reason::PATH_UNRESOLVED), len));
    }
    Ok(len)
}

/// Reads a kernel word at `addr` (0 if it cannot be read).
#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    let mut value: u64 = 0;
    // SAFETY: the helper reads 8 bytes at a kernel address into our local, or fails and
    // leaves it zeroed.
    unsafe {
        gen::bpf_probe_read_kernel((&raw mut value).cast(), 8, addr as *const core::ffi::c_void);
    }
    value
}

/// Where [`resolve_by_walk`] keeps how it ended, in `scratch.event.path` after [`SPILL`]'s
/// slot: one of the `WALK_*` values.
const STATUS: usize = PATH_BUF_LEN - 4;
const WALK_RUNNING: u32 = 0;
const WALK_DONE: u32 = 1;
const WALK_TOO_LONG: u32 = 2;
const WALK_UNRESOLVED: u32 = 3;

/// What one step of [`resolve_by_walk`] needs from the last, on the caller's stack. The
/// write position is not here but in the buffer ([`SPILL`], read back masked): a value the
/// verifier tracks on the stack would differ after each step and make it check the step again
/// for every value; kept in map memory, it is the same unknown every time, so the step is
/// checked once (or a few times, until the states agree).
#[repr(C)]
struct Walk {
    /// The `struct mount *` whose names are being walked.
    mount: u64,
    /// The dentry whose name comes next.
    current: u64,
    /// `scratch.event.path`.
    buf: *mut u8,
}

#[inline(always)]
fn store(buf: *mut u8, at: usize, value: u32) {
    // SAFETY: a 4-byte-aligned u32 slot at the end of our PATH_BUF_LEN buffer.
    unsafe { core::ptr::write_volatile(buf.add(at).cast::<u32>(), value) }
}

#[inline(always)]
fn load(buf: *mut u8, at: usize) -> u32 {
    // SAFETY: as in `store`.
    unsafe { core::ptr::read_volatile(buf.add(at).cast::<u32>()) }
}

/// The path of the name `dentry` (which need not exist yet) in the mount `vfsmount`, built
/// as the kernel's `d_path` builds it: the names from `dentry` up to its mount's root, then the
/// mount point's names in the parent mount, and so on up to the root of the mount tree (not the
/// task's root: the two differ only under `chroot`). Returns the path's length with its NUL
/// (the path in `scratch.event.path`, `scratch.key` prepared), or the fail-closed verdict with
/// the length of what `scratch.event.path` holds to record. Names renamed while this runs can
/// give a path that never existed; the walk still ends (at most [`MAX_WALK`] steps) or fails
/// closed.
///
/// One step is one `bpf_loop` iteration ([`walk_step`]): the verifier checks a step once
/// instead of once per possible step (48 of them, in every hook that walks).
#[inline(always)]
pub(crate) fn resolve_by_walk(
    vfsmount: u64,
    dentry: u64,
    scratch: *mut Scratch,
) -> Result<u32, (Verdict, u32)> {
    let o = offsets::walk_offsets();
    let unresolved = Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    // SAFETY: `buf` is our PATH_BUF_LEN scratch buffer; the result is copied from within
    // REL_START..=REL_END to its start (at most SPAN_MASK bytes).
    unsafe {
        let buf = (*scratch).event.path.as_mut_ptr();
        store(buf, SPILL, SPAN_MASK);
        store(buf, STATUS, WALK_RUNNING);
        let mut walk = Walk {
            mount: vfsmount.wrapping_sub(o.mount_mnt),
            current: dentry,
            buf,
        };
        let step: extern "C" fn(u64, *mut core::ffi::c_void) -> i64 = walk_step;
        if bpf_loop(MAX_WALK, step as *mut _, (&raw mut walk).cast(), 0) < 0 {
            return unresolved;
        }
        match load(buf, STATUS) {
            WALK_DONE => {}
            WALK_TOO_LONG => return Err((Verdict::deny(reason::PATH_TOO_LONG), 0)),
            // Unreadable, or still running after MAX_WALK steps.
            _ => return unresolved,
        }
        // The names fill `buf[REL_START + at + 1 ..= REL_END]`.
        let len = forget(buf, SPAN_MASK - (load(buf, SPILL) & SPAN_MASK));
        if len == 0 {
            // The root of the mount tree itself.
            *buf = b'/';
            *buf.add(1) = 0;
            return prepare_key(scratch, 2);
        }
        // Forward, to the start of the buffer (a copy that overlaps only towards its end).
        if gen::bpf_probe_read_kernel(buf.cast(), len, buf.add((REL_END - len) as usize).cast())
            != 0
        {
            return unresolved;
        }
        *buf.add(len as usize) = 0;
        if len + 1 > PATH_KEY_LEN as u32 {
            return Err((Verdict::deny(reason::PATH_TOO_LONG), len + 1));
        }
        prepare_key(scratch, len + 1)
    }
}

/// One step of [`resolve_by_walk`]: prepends one name, or crosses one mount. Returns 1 to
/// stop (the status written), 0 to go on.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let o = offsets::walk_offsets();
    // SAFETY: `ctx` is the `Walk` that `resolve_by_walk` passed to `bpf_loop`; `buf` is our
    // PATH_BUF_LEN scratch buffer, every position below within REL_START..=REL_END and every
    // copy at most NAME_MAX bytes.
    unsafe {
        let walk = &mut *ctx.cast::<Walk>();
        let buf = walk.buf;
        let mount = walk.mount;
        let current = walk.current;
        // `buf[REL_START + at]` is the next byte to write, backwards.
        let at = load(buf, SPILL) & SPAN_MASK;
        let root = read_u64(mount + o.mount_mnt + o.mnt_root);
        let parent = read_u64(current + o.d_parent);
        if current == root || current == parent {
            let parent_mount = read_u64(mount + o.mount_parent);
            if parent_mount == mount || parent_mount == 0 {
                store(buf, STATUS, WALK_DONE);
                return 1;
            }
            walk.current = read_u64(mount + o.mount_mountpoint);
            walk.mount = parent_mount;
            return 0;
        }
        let name = read_u64(current + o.d_name_name);
        let name_len = read_u64(current + o.d_name_len) as u32;
        let n = in_span(name_len) & NAME_MAX;
        if name_len > NAME_MAX || n + 1 > at {
            store(buf, STATUS, WALK_TOO_LONG);
            return 1;
        }
        let start = REL_START + in_span(at - n);
        if gen::bpf_probe_read_kernel(
            buf.add(start as usize).cast(),
            n,
            name as *const core::ffi::c_void,
        ) != 0
        {
            store(buf, STATUS, WALK_UNRESOLVED);
            return 1;
        }
        let slash = in_span(at - n - 1);
        *buf.add((REL_START + slash) as usize) = b'/';
        store(buf, SPILL, slash);
        walk.current = parent;
        0
    }
}

/// The exact deny rules that name the file behind `dentry`; none for a name that does not
/// exist (a null inode).
#[inline(always)]
pub(crate) fn denied_dentry(dentry: *const u8, slot: u32) -> InodeRules {
    let inode = offsets::dentry_inode(dentry);
    if inode.is_null() {
        return NO_INODE_RULES;
    }
    let (ino, dev) = offsets::inode_identity(inode);
    let key = InodeKey { ino, dev, slot };
    // SAFETY: plain-data key and value.
    match unsafe { DENIED_INODES.get(key) } {
        Some(rules) => *rules,
        None => NO_INODE_RULES,
    }
}
