//! Grants: a rule that requires a grant allows an action only if a supervisor granted exactly
//! that action to the target (`oxd ctl grant`), and each action takes one use of the grant, so
//! a repeat (a replay) is denied once the uses are gone (see `oxd_common::GrantKey`).

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use oxd_common::{grant_kind, reason, GrantKey};

use crate::{atomic::compare_exchange, confine::Gate, maps::GRANTS};

/// Attempts at the compare-and-exchange before giving up (denied, fail closed).
const ATTEMPTS: u32 = 8;

/// What a grant decided: a [`reason`] (`GRANTED` allows, the others deny) and the grant's
/// number (0 when there is none).
#[derive(Clone, Copy)]
pub(crate) struct Taken {
    pub(crate) reason: u32,
    pub(crate) id: u32,
}

/// Takes one use of the target's grant for a connect or send to `addr`, `port` with protocol
/// `proto_bit`.
#[inline(always)]
pub(crate) fn take_network(gate: &Gate, addr: &[u8; 16], port: u16, proto_bit: u32) -> Taken {
    let key = GrantKey {
        target: gate.target,
        addr: *addr,
        port,
        proto: proto_bit as u8,
        kind: grant_kind::NETWORK,
        _pad: 0,
    };
    let Some(grant) = GRANTS.get_ptr_mut(key) else {
        return Taken {
            reason: reason::GRANT_REQUIRED,
            id: 0,
        };
    };
    // SAFETY: `grant` points at a live element of the map (valid while the program runs),
    // 8-byte aligned; its `uses` is only changed atomically by programs, or replaced whole by
    // user space. Helper without arguments.
    unsafe {
        let id = read_volatile(addr_of!((*grant).id));
        if bpf_ktime_get_boot_ns() > read_volatile(addr_of!((*grant).expires_ns)) {
            return Taken {
                reason: reason::GRANT_EXPIRED,
                id,
            };
        }
        let uses = addr_of_mut!((*grant).uses);
        let mut i = 0;
        while i < ATTEMPTS {
            let left = read_volatile(uses);
            if left == 0 {
                break;
            }
            if compare_exchange(uses, left, left - 1) {
                return Taken {
                    reason: reason::GRANTED,
                    id,
                };
            }
            i += 1;
        }
        Taken {
            reason: reason::GRANT_USED,
            id,
        }
    }
}
