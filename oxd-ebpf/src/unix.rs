//! Unix sockets outside the agent's confinement, decided by the `[ipc]` socket rules
//! (`unix_allow`, `unix_deny`, default `unix`). Called by [`crate::ipc`]'s
//! `unix_stream_connect` and `unix_may_send` hooks once the other socket is known to be outside.
//!
//! A socket bound to a file-system name is judged by where it was bound, not by the name the
//! agent used to reach it: `unix_sk(other)->path` (the mount and dentry the kernel keeps for
//! the bound socket) resolved in the host's view by the same walk the `path_*` hooks use
//! ([`crate::path::resolve_by_walk`]: up through the mounts to the root of the mount tree), so
//! a symlink, a hard link or a bind mount of the socket file, or a name relative to another
//! cwd or root, all reach the same path. An abstract name is judged by its bytes
//! (`unix_sk(other)->addr->name`), in key spaces of its own (see
//! [`oxd_common::UNIX_ABSTRACT_EXACT`]). An unnamed socket (a `socketpair` end handed over) is
//! judged by the default. Whatever cannot be read is denied (fail closed).

use core::ptr::addr_of_mut;

use aya_ebpf::helpers::generated as gen;
use oxd_common::{
    reason, RULE_DEFAULT, SLOT_PREFIX_BITS, UNIX_ABSTRACT_EXACT, UNIX_ABSTRACT_NAME_MAX,
    UNIX_ABSTRACT_PREFIX,
};

use crate::{
    confine::Gate,
    event::Verdict,
    maps::{Scratch, UNIX_RULES},
    offsets,
    path::{lookup_path, resolve_by_walk},
};

/// Bytes of `sun_family` before `sun_path`.
const SUN_FAMILY_LEN: i32 = 2;

/// How a socket outside the confinement was judged.
#[derive(Clone, Copy)]
pub(crate) struct Judged {
    pub(crate) verdict: Verdict,
    /// Bytes of the resolved path (with its NUL) in `scratch.event.path` to record as the target; 0
    /// to record the socket's address as bound instead (abstract and unnamed sockets, and
    /// paths that could not be resolved).
    pub(crate) resolved_len: u32,
}

/// The verdict on reaching the Unix socket `sk` (a `struct sock *`) from outside.
#[inline(always)]
pub(crate) fn judge(gate: &Gate, sk: u64, scratch: *mut Scratch) -> Judged {
    let unresolved = Judged {
        verdict: Verdict::deny(reason::PATH_UNRESOLVED),
        resolved_len: 0,
    };
    let default = Verdict {
        decision: gate.config.ipc_unix_default,
        reason: reason::DEFAULT,
        rule_id: RULE_DEFAULT,
    };
    let Some((mnt, dentry)) = offsets::unix_sock_path(sk) else {
        return unresolved;
    };
    if dentry != 0 {
        if mnt == 0 {
            return unresolved;
        }
        return match resolve_by_walk(mnt, dentry, scratch) {
            Ok(len) => Judged {
                verdict: lookup_path(
                    &UNIX_RULES,
                    scratch,
                    gate.slot,
                    len,
                    gate.config.ipc_unix_default,
                ),
                resolved_len: len,
            },
            Err((verdict, _)) => Judged {
                verdict,
                resolved_len: 0,
            },
        };
    }
    let Some(addr) = offsets::unix_address_checked(sk) else {
        return unresolved;
    };
    if addr == 0 {
        // Unnamed: nothing names it, the default decides.
        return Judged {
            verdict: default,
            resolved_len: 0,
        };
    }
    let Some((len, name)) = offsets::unix_address_name(addr) else {
        return unresolved;
    };
    // Not bound to a path: an abstract name (its first `sun_path` byte a NUL), or something
    // this code does not know, which fails closed.
    if offsets::unix_sun_path_first(name) != Some(0) {
        return unresolved;
    }
    let n = len - SUN_FAMILY_LEN - 1;
    if n < 0 || n as usize > UNIX_ABSTRACT_NAME_MAX {
        return unresolved;
    }
    Judged {
        verdict: abstract_lookup(gate, scratch, name, bounded_len(n as u32), default),
        resolved_len: 0,
    }
}

/// `len & 0x7f` through a volatile read, so that the compiler cannot drop the mask as
/// redundant (it knows `len <= 107`): the 6.1 verifier learns the bound only from a mask or a
/// comparison applied to the very register it checks, not from one applied to a copy.
#[inline(always)]
fn bounded_len(len: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw const len) & 0x7f }
}

/// Looks the abstract name of `n` bytes at `name + 3` (past `sun_family` and the leading NUL)
/// up: an exact rule first, then the longest prefix rule, else `default`.
#[inline(always)]
fn abstract_lookup(
    gate: &Gate,
    scratch: *mut Scratch,
    name: u64,
    n: u32,
    default: Verdict,
) -> Verdict {
    // SAFETY: the key lives in our per-CPU scratch map; `n` is at most 127, so the copy stays
    // within the key's 254 path bytes.
    unsafe {
        let key = addr_of_mut!((*scratch).key);
        let path = addr_of_mut!((*key).data.path).cast::<u8>();
        if gen::bpf_probe_read_kernel(
            path.add(2).cast(),
            n,
            (name + SUN_FAMILY_LEN as u64 + 1) as *const core::ffi::c_void,
        ) != 0
        {
            return Verdict::deny(reason::PATH_UNRESOLVED);
        }
        (*key).data.slot = gate.slot as u16;
        (*key).prefix_len = SLOT_PREFIX_BITS + (n + 2) * 8;
        *path = UNIX_ABSTRACT_EXACT;
        *path.add(1) = n as u8;
        if let Some(rule) = UNIX_RULES.get(&*key) {
            return Verdict {
                decision: rule.action,
                reason: reason::RULE,
                rule_id: rule.rule_id,
            };
        }
        *path = UNIX_ABSTRACT_PREFIX;
        *path.add(1) = 0;
        match UNIX_RULES.get(&*key) {
            Some(rule) => Verdict {
                decision: rule.action,
                reason: reason::RULE,
                rule_id: rule.rule_id,
            },
            None => default,
        }
    }
}
