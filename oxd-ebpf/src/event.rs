//! Verdicts and what becomes of them: the audit record sent through `EVENTS`, and the counters.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_buf, generated as gen, TASK_COMM_LEN,
    },
    maps::ring_buf::RingBufEntry,
};
use oxd_common::{action, counter, mode, Event, RULE_DEFAULT};

use crate::{
    confine::Gate,
    maps::{Scratch, COUNTERS, EVENTS},
};

/// The errno an LSM hook refuses with (returned negated).
pub(crate) const EPERM: i32 = 1;

/// Outcome of a policy lookup.
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) decision: u32,
    pub(crate) reason: u32,
    pub(crate) rule_id: u32,
}

impl Verdict {
    /// A denial that no rule made (an `oxd_common::reason` other than `RULE`).
    pub(crate) const fn deny(reason: u32) -> Self {
        Self {
            decision: action::DENY,
            reason,
            rule_id: RULE_DEFAULT,
        }
    }
}

/// Adds one to counter `index` (an `oxd_common::counter`).
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only touched by this CPU with preemption disabled.
        unsafe { *counter += 1 };
    }
}

/// Counts one refusal (for hooks that refuse without [`refuse`]).
#[inline(always)]
pub(crate) fn count_denied() {
    count(counter::DENIED);
}

/// Reserves an event, fills the fields every operation has, and returns it to be completed and
/// submitted; counts the loss if the ring buffer is full.
#[inline(always)]
pub(crate) fn start_event(op: u32, gate: &Gate, verdict: &Verdict) -> Option<RingBufEntry<Event>> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::RINGBUF_LOST);
        return None;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: bpf helpers, and writes into the memory we reserved (an `Event`, 8-byte aligned).
    // The zeroed fields are written one volatile store each: adjacent zero stores would
    // otherwise become a call to `memset`, a byte loop the verifier walks byte by byte on
    // every path that records an event.
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).generation = gate.config.generation;
        (*event).pid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).op = op;
        (*event).decision = verdict.decision;
        (*event).reason = verdict.reason;
        (*event).rule_id = verdict.rule_id;
        (*event).mode = gate.mode();
        write_volatile(addr_of_mut!((*event).proto), 0);
        write_volatile(addr_of_mut!((*event).path_len), 0);
        write_volatile(addr_of_mut!((*event).access), 0);
        write_volatile(addr_of_mut!((*event).detail), 0);
        write_volatile(addr_of_mut!((*event).peer_pid), 0);
        write_volatile(addr_of_mut!((*event)._pad1), 0);
        write_volatile(addr_of_mut!((*event).port), 0);
        write_volatile(addr_of_mut!((*event)._pad0), 0);
        let addr = addr_of_mut!((*event).addr).cast::<u64>();
        write_volatile(addr, 0);
        write_volatile(addr.add(1), 0);
        (*event).path[0] = 0;
        // Straight into the event, zeroed first: kernels before 6.4 do not pad the name after
        // its NUL (a failing call zeroes the buffer itself).
        let comm: *mut [u8; TASK_COMM_LEN] = addr_of_mut!((*event).comm);
        write_volatile(comm.cast::<u64>(), 0);
        write_volatile(comm.cast::<u64>().add(1), 0);
        gen::bpf_get_current_comm(comm.cast(), TASK_COMM_LEN as u32);
    }
    Some(entry)
}

/// Copies the resolved path from the scratch buffer into a reserved event.
#[inline(always)]
pub(crate) fn record_path(event: *mut Event, scratch: *mut Scratch, path_len: u32) {
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

/// Whether the hook must refuse the action: the verdict denies and the policy enforces (in
/// audit mode nothing is refused). A refusal is counted here.
///
/// Call it as the condition of the hook's refusing return: the side effect inside the branch
/// keeps the compiler from folding the hook's two returns into arithmetic the verifier cannot
/// bound (to [-4095, 0] for an LSM hook).
#[inline(always)]
pub(crate) fn refuse(verdict: &Verdict, gate: &Gate) -> bool {
    if verdict.decision == action::DENY && gate.mode() != mode::AUDIT {
        count(counter::DENIED);
        return true;
    }
    false
}
