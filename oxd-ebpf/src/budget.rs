//! Budgets: at most `count` actions a rule allows in a window of `per_ms` (see
//! `oxd_common::BudgetSpec`), counted per confined target, atomically across CPUs.
//!
//! A counter packs the window's start (milliseconds of boot time, top 40 bits) and the actions
//! counted in it (low 24 bits) in one word, so one compare-and-exchange starts a new window or
//! counts one more action: two CPUs can never both take the last unit of a window.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_boot_ns};
use oxd_common::{BudgetKey, BUDGET_COUNT_BITS, MAX_BUDGETS, MAX_POLICY_SLOTS};

use crate::{
    atomic::compare_exchange,
    confine::Gate,
    maps::{BUDGET_SPECS, BUDGET_STATE},
};

/// Attempts at the compare-and-exchange before giving up (denied, fail closed): each failure
/// means another CPU counted an action of the same budget in between.
const ATTEMPTS: u32 = 8;

const COUNT_MASK: u64 = (1 << BUDGET_COUNT_BITS) - 1;

/// The counter of `key` in `BUDGET_STATE`, made (at 0) if there is none yet; `None` if it
/// cannot be (the table is full).
#[inline(always)]
pub(crate) fn counter(key: BudgetKey) -> Option<*mut u64> {
    let state = BUDGET_STATE.get_ptr_mut(key);
    if state.is_some() {
        return state;
    }
    // Another CPU may make it first: then this insert fails and the lookup finds its.
    let _ = BUDGET_STATE.insert(key, 0, u64::from(BPF_NOEXIST));
    BUDGET_STATE.get_ptr_mut(key)
}

/// Takes one action from budget `budget` (a rule entry's `budget`: 1 + the index in the
/// slot's budgets) of the gate's slot, for the gate's target. True if the budget had one left
/// in the current window; false if it is spent, or cannot be counted (no such budget, no room
/// for a new counter, too much contention): the action is then denied.
#[inline(always)]
pub(crate) fn take(gate: &Gate, budget: u16) -> bool {
    if budget == 0 || u32::from(budget) > MAX_BUDGETS || gate.slot >= MAX_POLICY_SLOTS {
        return false;
    }
    let Some(spec) = BUDGET_SPECS.get(gate.slot * MAX_BUDGETS + u32::from(budget) - 1) else {
        return false;
    };
    if spec.id == 0 || spec.per_ms == 0 {
        return false;
    }
    let (id, count, per_ms) = (spec.id, u64::from(spec.count), u64::from(spec.per_ms));
    let key = BudgetKey {
        target: gate.target,
        id,
    };
    let Some(state) = counter(key) else {
        return false;
    };
    // SAFETY: helper without arguments; `state` points at a live element of the map (a hash
    // element stays valid while the program runs), 8-byte aligned, only ever changed
    // atomically (by kernel programs) or replaced whole (by user space).
    unsafe {
        let now_ms = bpf_ktime_get_boot_ns() / 1_000_000;
        let mut i = 0;
        while i < ATTEMPTS {
            let current = core::ptr::read_volatile(state);
            let start = current >> BUDGET_COUNT_BITS;
            let used = current & COUNT_MASK;
            let next = if current == 0 || now_ms.wrapping_sub(start) >= per_ms {
                now_ms << BUDGET_COUNT_BITS | 1
            } else if used >= count {
                return false;
            } else {
                current + 1
            };
            if compare_exchange(state, current, next) {
                return true;
            }
            i += 1;
        }
    }
    false
}
