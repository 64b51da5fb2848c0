//! Connection limits: at most `count` sockets of a confined target hold a slot of a rule's
//! limit at once (see `oxd_common::BudgetSpec`, `per_ms` 0).
//!
//! A socket takes a slot at the first connect or addressed send the rule allows it, and keeps
//! it until it is closed: `sock_release` (cgroup `sock` hook `BPF_CGROUP_INET_SOCK_RELEASE`,
//! attached wherever the `sock_addr` programs are, so every socket that took a slot passes it)
//! gives the slot back. Which slot a socket holds is kept by its cookie in `SOCKET_HOLDS`, so a
//! socket counts once however often it connects or sends, and a socket shared between
//! processes (inherited, passed over a Unix socket) counts once until its last descriptor is
//! closed. A socket holds one slot, never given back while it is open: one that holds a slot
//! of one limit is denied what another limited rule (or another target's) would allow it.
//! Giving the first slot back instead would let a connected UDP socket keep talking to the
//! first destination (a denied `connect` leaves its association as it was) while another
//! socket takes the slot.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};
use oxd_common::{BudgetKey, MAX_BUDGETS, MAX_POLICY_SLOTS};

use crate::{
    atomic::compare_exchange,
    budget,
    confine::Gate,
    maps::{BUDGET_SPECS, BUDGET_STATE, SOCKET_HOLDS},
};

/// Attempts at the compare-and-exchange before giving up (denied, fail closed).
const ATTEMPTS: u32 = 8;

/// What taking a slot did: the socket already held this limit's slot (nothing taken), took a
/// new one (given back by [`undo`] if the action is denied after all), or found none (or holds
/// another limit's).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Held,
    Taken(BudgetKey),
    Refused,
}

/// The cookie of the socket of a `sock_addr` program's context (`ctx`).
#[inline(always)]
pub(crate) fn cookie_of(ctx: *mut core::ffi::c_void) -> u64 {
    // SAFETY: `ctx` is the program's context, which the helper takes for `sock_addr` and
    // `sock` programs alike.
    unsafe { bpf_get_socket_cookie(ctx) }
}

/// Takes a slot of limit `limit` (a rule entry's `limit`: 1 + the index in the slot's
/// budgets) of the gate's slot for the socket `cookie`, for the gate's target.
#[inline(always)]
pub(crate) fn take(gate: &Gate, limit: u16, cookie: u64) -> Slot {
    if limit == 0 || u32::from(limit) > MAX_BUDGETS || gate.slot >= MAX_POLICY_SLOTS {
        return Slot::Refused;
    }
    let Some(spec) = BUDGET_SPECS.get(gate.slot * MAX_BUDGETS + u32::from(limit) - 1) else {
        return Slot::Refused;
    };
    if spec.id == 0 || spec.per_ms != 0 || cookie == 0 {
        return Slot::Refused;
    }
    let key = BudgetKey {
        target: gate.target,
        id: spec.id,
    };
    let max = u64::from(spec.count);
    // SAFETY: a map element read while the program runs (valid until it ends).
    if let Some(held) = unsafe { SOCKET_HOLDS.get(cookie) } {
        return if *held == key {
            Slot::Held
        } else {
            Slot::Refused
        };
    }
    if !increment(key, max) {
        return Slot::Refused;
    }
    if SOCKET_HOLDS
        .insert(cookie, key, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // A full table, or another thread's action on the same socket made the hold first:
        // this slot goes back; the action counts as held only if that hold is this limit's.
        give_back(key);
        // SAFETY: as above.
        return match unsafe { SOCKET_HOLDS.get(cookie) } {
            Some(held) if *held == key => Slot::Held,
            _ => Slot::Refused,
        };
    }
    Slot::Taken(key)
}

/// Gives back the slot an action took, when the action is denied after all.
#[inline(always)]
pub(crate) fn undo(slot: Slot, cookie: u64) {
    if let Slot::Taken(key) = slot {
        if SOCKET_HOLDS.remove(cookie).is_ok() {
            give_back(key);
        }
    }
}

/// Counts one more socket on `key`'s counter if fewer than `max` are.
#[inline(always)]
fn increment(key: BudgetKey, max: u64) -> bool {
    let Some(state) = budget::counter(key) else {
        return false;
    };
    let mut i = 0;
    while i < ATTEMPTS {
        // SAFETY: `state` points at a live element of the map (valid while the program runs),
        // 8-byte aligned, changed only atomically by programs or replaced whole by user space.
        unsafe {
            let current = core::ptr::read_volatile(state);
            if current >= max {
                return false;
            }
            if compare_exchange(state, current, current + 1) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Counts one socket fewer on `key`'s counter (never below 0: user space may have reset it).
/// Tried harder than a take: a slot not given back stays taken until user space resets it.
#[inline(always)]
fn give_back(key: BudgetKey) {
    let Some(state) = BUDGET_STATE.get_ptr_mut(key) else {
        return;
    };
    let mut i = 0;
    while i < 4 * ATTEMPTS {
        // SAFETY: as in `increment`.
        unsafe {
            let current = core::ptr::read_volatile(state);
            if current == 0 || compare_exchange(state, current, current - 1) {
                return;
            }
        }
        i += 1;
    }
}

#[cgroup_sock(sock_release)]
fn sock_release(ctx: SockContext) -> i32 {
    let cookie = cookie_of(ctx.sock.cast());
    // SAFETY: as in `take`.
    if let Some(held) = unsafe { SOCKET_HOLDS.get(cookie) } {
        let key = *held;
        if SOCKET_HOLDS.remove(cookie).is_ok() {
            give_back(key);
        }
    }
    1
}
