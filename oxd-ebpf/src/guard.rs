//! The guard: what protects oxd and the kernel from the agent it confines, whatever the
//! agent's uid, capabilities or policy mode. Every policy governs [`governs::GUARD`], so every
//! confined task passes these checks; a guard decision is always a denial, recorded with
//! reason [`reason::GUARD`] and enforced in every mode (audit mode learns a policy, it does
//! not let the agent switch oxd off or leave its confinement).
//!
//! The hook families that use it live in their own modules; this one holds what they share.

use oxd_common::{governs, mode, reason};

use crate::{
    confine::Gate,
    event::{start_event, Verdict, EPERM},
};

/// The gate of a guard hook: `decide` is true for every confined task (every policy governs
/// the guard, and a slot without a configuration fails closed).
#[inline(always)]
pub(crate) fn gate() -> Gate {
    Gate::open(governs::GUARD)
}

/// Records a guard denial of `op` (`detail` and `peer_pid` as the op documents) and returns
/// the hook's refusal (`-EPERM`). Enforced in every mode, so recorded as enforced.
#[inline(always)]
pub(crate) fn deny(gate: &Gate, op: u32, detail: u32, peer_pid: u32) -> i32 {
    let verdict = Verdict::deny(reason::GUARD);
    if let Some(mut entry) = start_event(op, gate, &verdict) {
        let event = entry.as_mut_ptr();
        // SAFETY: the event is ours until submitted.
        unsafe {
            (*event).mode = mode::ENFORCE;
            (*event).detail = detail;
            (*event).peer_pid = peer_pid;
        }
        entry.submit(0);
    }
    crate::event::count_denied();
    -EPERM
}
