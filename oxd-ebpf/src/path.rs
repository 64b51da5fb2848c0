//! Deciding by file: the resolved path against a rule trie, and the file's identity against the
//! exact deny rules.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::path,
    helpers::{bpf_d_path, bpf_probe_read_kernel_buf},
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
