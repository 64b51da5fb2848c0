//! Deciding by file: the resolved path against a rule trie, and the file's identity against the
//! exact deny rules.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::path,
    helpers::{bpf_d_path, bpf_probe_read_kernel_buf, generated as gen},
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

/// Resolves `file_path` into `scratch.buf` and prepares `scratch.key` for a lookup. Returns the
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

// Paths of names that a `path_*` hook is given as (directory, name), or as a bare dentry.

/// Longest name of one directory entry (the kernel's `NAME_MAX`).
const NAME_MAX: u32 = 255;

/// Most directory levels [`resolve_link_source`] walks between a name and its mount's root. A
/// deeper name fails closed (as unresolved). (A rule key holds 253 bytes: a deeper path that
/// still fits is made of one- and two-byte names.)
const MAX_DEPTH: u32 = 96;

/// Masks a position in the scratch buffer: a no-op on values the code has just bounded (below
/// `PATH_KEY_LEN`), which tells the verifier the bound it cannot derive from the comparison.
const POS_MASK: u32 = 0x1ff;

/// `value & POS_MASK`, through a volatile read so that the compiler cannot drop the mask as
/// redundant: the verifier only knows the bounds it sees applied to the register it checks.
#[inline(always)]
fn bounded(value: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw const value) & POS_MASK }
}

/// Copies the path in `scratch.buf` (`len` bytes with its NUL) into `scratch.key` for a lookup.
#[inline(always)]
fn prepare_key(scratch: *mut Scratch, len: u32) -> Result<u32, (Verdict, u32)> {
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

/// Resolves `dir` into `scratch.buf` with `bpf_d_path` and returns the length of the
/// directory's path without its NUL, or the fail-closed verdict.
#[inline(always)]
fn resolve_dir(dir: *mut path, scratch: *mut Scratch) -> Result<u32, (Verdict, u32)> {
    // SAFETY: `dir` is a BTF-checked `struct path *`; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe { bpf_d_path(dir, (*scratch).buf.as_mut_ptr().cast(), PATH_BUF_LEN as u32) };
    if len <= 0 {
        return Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    }
    let len = len as u32;
    if len as usize > PATH_KEY_LEN {
        return Err((Verdict::deny(reason::PATH_TOO_LONG), len));
    }
    Ok(len - 1)
}

/// The furthest [`resolve_child`] appends a name: the name, its `/` and the NUL fit after it.
const CHILD_END_MAX: u32 = (PATH_BUF_LEN as u32) - NAME_MAX - 2;

/// `value & 0xfff` (a position in the scratch buffer), through a volatile read (see
/// [`bounded`]).
#[inline(always)]
fn in_buf(value: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw const value) & 0xfff }
}

/// The path of the name `dentry` in the directory `dir` (a hook's `const struct path *dir,
/// struct dentry *dentry`): the directory resolved by `bpf_d_path`, then `/` and the name.
/// Returns the length with the NUL and prepares `scratch.key`, or the fail-closed verdict with
/// the length of what `scratch.buf` holds to record (the whole path when it is merely too long
/// for a rule key).
#[inline(always)]
pub(crate) fn resolve_child(
    dir: *mut path,
    dentry: *const u8,
    scratch: *mut Scratch,
) -> Result<u32, (Verdict, u32)> {
    // SAFETY: `dir` is a BTF-checked `struct path *`; the buffer is PATH_BUF_LEN bytes.
    let len = unsafe { bpf_d_path(dir, (*scratch).buf.as_mut_ptr().cast(), PATH_BUF_LEN as u32) };
    if len <= 0 {
        return Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    }
    let end = in_buf(len as u32 - 1);
    if end > CHILD_END_MAX {
        return Err((Verdict::deny(reason::PATH_TOO_LONG), end + 1));
    }
    let (name, name_len) = offsets::dentry_name(dentry);
    // SAFETY: positions at most CHILD_END_MAX + NAME_MAX + 1, inside our PATH_BUF_LEN buffer.
    unsafe {
        let buf = (*scratch).buf.as_mut_ptr();
        let mut at = end;
        // The root directory resolves to `/`: its children need no second slash.
        if at == 0 || *buf.add((at - 1) as usize) != b'/' {
            *buf.add(at as usize) = b'/';
            at = in_buf(at + 1);
            if at > CHILD_END_MAX + 1 {
                return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
            }
        }
        if name_len > NAME_MAX {
            *buf.add(end as usize) = 0;
            return Err((Verdict::deny(reason::PATH_TOO_LONG), end + 1));
        }
        let n = bounded(name_len) & NAME_MAX;
        if gen::bpf_probe_read_kernel(buf.add(at as usize).cast(), n, name.cast()) != 0 {
            *buf.add(end as usize) = 0;
            return Err((Verdict::deny(reason::PATH_UNRESOLVED), end + 1));
        }
        let total = in_buf(at + n);
        if total > CHILD_END_MAX + NAME_MAX + 1 {
            return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
        }
        *buf.add(total as usize) = 0;
        if total + 1 > PATH_KEY_LEN as u32 {
            return Err((Verdict::deny(reason::PATH_TOO_LONG), total + 1));
        }
        prepare_key(scratch, total + 1)
    }
}

/// Where [`resolve_link_source`] writes a name's path below its mount's root, backwards from
/// the end: `scratch.buf[REL_START..REL_END]`, far from the resolved directory at the start.
const REL_START: u32 = 1024;
const REL_END: u32 = REL_START + 511;

/// Bytes of `scratch.buf` at its end that hold values the verifier must forget: a value loaded
/// from map memory is an unknown scalar to it, so the states after a loop, whichever iteration
/// left it, are equal and the verifier explores what follows once (not once per iteration).
const SPILL: usize = PATH_BUF_LEN - 8;

/// Stores `value` in spill slot `index` (0 or 1) of `scratch.buf` and loads it back, masked:
/// the same value, of which the verifier knows only the mask.
#[inline(always)]
fn forget(buf: *mut u8, index: usize, value: u32) -> u32 {
    // SAFETY: the two u32 slots at the end of our PATH_BUF_LEN buffer, 4-byte aligned.
    unsafe {
        let slot = buf.add(SPILL + 4 * index).cast::<u32>();
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot) & POS_MASK
    }
}

/// The path of the existing name `dentry` of a hard link's source, given the link's new
/// directory `new_dir` (a link never crosses mounts, so both are in `new_dir`'s mount): the
/// mount's path (the resolved `new_dir` less the part below the mount's root), then the names
/// from the mount's root down to `dentry`. Returns the length with the NUL and prepares
/// `scratch.key`, or the fail-closed verdict. Names renamed while this runs can give a wrong
/// path: each walk stops at the mount's root or fails closed as unresolved.
#[inline(always)]
pub(crate) fn resolve_link_source(
    new_dir: *mut path,
    dentry: *const u8,
    scratch: *mut Scratch,
) -> Result<u32, (Verdict, u32)> {
    let end = bounded(resolve_dir(new_dir, scratch)?);
    let root = offsets::path_mnt_root(new_dir);
    let unresolved = Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    // SAFETY: `buf` is our PATH_BUF_LEN scratch buffer; every position below is masked to
    // POS_MASK (or within REL_START..=REL_END) and every copy is at most NAME_MAX bytes.
    unsafe {
        let buf = (*scratch).buf.as_mut_ptr();
        // 1. How much of the resolved `new_dir` lies below the mount's root.
        let mut current = offsets::path_dentry(new_dir);
        let mut below = 0;
        let mut depth = 0;
        while current != root {
            let parent = offsets::dentry_parent(current);
            if depth >= MAX_DEPTH || parent == current {
                return unresolved;
            }
            let (_, name_len) = offsets::dentry_name(current);
            below = bounded(below + 1 + (name_len & NAME_MAX));
            if below > end {
                return unresolved;
            }
            current = parent;
            depth += 1;
        }
        let below = forget(buf, 0, below);
        if below > end {
            return unresolved;
        }
        let mut prefix = bounded(end - below);
        // A mount at `/` contributes nothing: the names below it start with their own `/`.
        if prefix == 1 && *buf == b'/' {
            prefix = 0;
        }
        let prefix = forget(buf, 1, prefix);
        // 2. The source's names, from `dentry` up to the mount's root, written backwards.
        let mut at = REL_END;
        let mut current = dentry;
        let mut depth = 0;
        while current != root {
            let parent = offsets::dentry_parent(current);
            if depth >= MAX_DEPTH || parent == current {
                return unresolved;
            }
            let (name, name_len) = offsets::dentry_name(current);
            let n = bounded(name_len) & NAME_MAX;
            if n + 1 > at - REL_START {
                return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
            }
            at = REL_START + bounded(at - REL_START - n);
            if gen::bpf_probe_read_kernel(buf.add(at as usize).cast(), n, name.cast()) != 0 {
                return unresolved;
            }
            at -= 1;
            *buf.add(at as usize) = b'/';
            current = parent;
            depth += 1;
        }
        let rel_len = forget(buf, 0, REL_END - at);
        // 3. The mount's path, then the names.
        if rel_len == 0 || prefix + rel_len + 1 > PATH_KEY_LEN as u32 {
            return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
        }
        let rel_at = REL_END - rel_len;
        if gen::bpf_probe_read_kernel(
            buf.add(prefix as usize).cast(),
            rel_len,
            buf.add(rel_at as usize).cast(),
        ) != 0
        {
            return unresolved;
        }
        let total = bounded(prefix + rel_len);
        *buf.add(total as usize) = 0;
        prepare_key(scratch, total + 1)
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

/// Most steps (names and mount crossings) [`resolve_by_walk`] takes before failing closed.
const MAX_WALK: u32 = 64;

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

/// The path of the name `dentry` (which need not exist yet) in the mount `vfsmount`, built
/// like the kernel's `d_path` but by hand, for the hooks where `bpf_d_path` is not allowed
/// (`path_mknod`): the names from `dentry` up to its mount's root, then the mount point's
/// names in the parent mount, and so on up to the root of the mount tree. Unlike `bpf_d_path`
/// it ends at the root of the whole mount tree, not at the task's root (the two differ only
/// under `chroot`). Returns the length with the NUL and prepares `scratch.key`, or the
/// fail-closed verdict.
#[inline(always)]
pub(crate) fn resolve_by_walk(
    vfsmount: u64,
    dentry: u64,
    scratch: *mut Scratch,
) -> Result<u32, (Verdict, u32)> {
    let o = offsets::walk_offsets();
    let unresolved = Err((Verdict::deny(reason::PATH_UNRESOLVED), 0));
    // SAFETY: `buf` is our PATH_BUF_LEN scratch buffer; every position below is within
    // REL_START..=REL_END and every copy at most NAME_MAX bytes.
    unsafe {
        let buf = (*scratch).buf.as_mut_ptr();
        let mut mount = vfsmount.wrapping_sub(o.mount_mnt);
        let mut current = dentry;
        let mut at = REL_END;
        let mut steps = 0;
        let mut done = false;
        while steps < MAX_WALK {
            steps += 1;
            let root = read_u64(mount + o.mount_mnt + o.mnt_root);
            let parent = read_u64(current + o.d_parent);
            if current == root || current == parent {
                let parent_mount = read_u64(mount + o.mount_parent);
                if parent_mount == mount || parent_mount == 0 {
                    done = true;
                    break;
                }
                current = read_u64(mount + o.mount_mountpoint);
                mount = parent_mount;
                continue;
            }
            let name = read_u64(current + o.d_name_name);
            let name_len = read_u64(current + o.d_name_len) as u32;
            let n = bounded(name_len) & NAME_MAX;
            if name_len > NAME_MAX || n + 1 > at - REL_START {
                return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
            }
            at = REL_START + bounded(at - REL_START - n);
            if gen::bpf_probe_read_kernel(
                buf.add(at as usize).cast(),
                n,
                name as *const core::ffi::c_void,
            ) != 0
            {
                return unresolved;
            }
            at -= 1;
            *buf.add(at as usize) = b'/';
            current = parent;
        }
        if !done {
            return unresolved;
        }
        let len = forget(buf, 0, REL_END - at);
        if len == 0 || len + 1 > PATH_KEY_LEN as u32 {
            return Err((Verdict::deny(reason::PATH_TOO_LONG), 0));
        }
        if gen::bpf_probe_read_kernel(buf.cast(), len, buf.add((REL_END - len) as usize).cast())
            != 0
        {
            return unresolved;
        }
        *buf.add(len as usize) = 0;
        prepare_key(scratch, len + 1)
    }
}
