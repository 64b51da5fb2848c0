//! Verdicts and what becomes of them: the audit record sent through `EVENTS`, and the counters.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, generated as gen, TASK_COMM_LEN,
    },
};
use oxd_common::{
    action, counter, mode, record, tally, Event, TallyKey, EVENT_HEADER_LEN, PATH_BUF_LEN,
    RATE_WINDOW_SHIFT, RULE_DEFAULT,
};

use crate::{
    confine::Gate,
    maps::{COUNTERS, EVENTS, RATE, SCRATCH, TALLIES},
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

/// An event being built in the per-CPU scratch map (`SCRATCH`'s `event`), to be completed and
/// then [`Pending::submit`]ted: a ring buffer output of its header and the `path_len` bytes of
/// its path used. The path resolvers write into the same `event.path`, so a resolved path is
/// never copied before the output (which copies exactly the bytes used into the ring).
///
/// Nothing may resolve another path into the scratch between [`start_event`] and
/// [`Pending::submit`]: every hook submits before it resolves its next path.
pub(crate) struct Pending(*mut Event);

impl Pending {
    /// The event, ours until submitted.
    #[inline(always)]
    pub(crate) fn as_mut_ptr(&mut self) -> *mut Event {
        self.0
    }

    /// Outputs the event's header and the `path_len` bytes of its path (bounded to the path
    /// buffer) into `EVENTS`; counts it as submitted, or as lost if the ring buffer is full.
    #[inline(always)]
    pub(crate) fn submit(self, flags: u64) {
        let event = self.0;
        // SAFETY: the event lives in our per-CPU scratch map, PATH_BUF_LEN bytes of path after
        // EVENT_HEADER_LEN bytes of header; the size is bounded to that for the verifier.
        unsafe {
            let mut len = read_volatile(addr_of!((*event).path_len));
            if len > PATH_BUF_LEN as u32 {
                len = PATH_BUF_LEN as u32;
                (*event).path_len = len;
            }
            let size = EVENT_HEADER_LEN + len as usize;
            let bytes = core::slice::from_raw_parts(event.cast::<u8>(), size);
            if EVENTS.output::<[u8]>(bytes, flags | wakeup()).is_ok() {
                count(counter::SUBMITTED);
            } else {
                count(counter::RINGBUF_LOST);
            }
        }
    }
}

/// Bytes waiting in the ring buffer from which a record wakes the reader: at most this, and at
/// most a quarter of the ring.
const WAKE_AT_MOST: u64 = 32 * 1024;

/// The wake-up flag of a record: none while little waits in the ring (the reader drains it on
/// its own every few milliseconds, `pump::FLUSH_INTERVAL`), forced once enough waits that the
/// reader should not wait for its next flush. A wake-up is an interrupt and a context switch;
/// sent with every record, it was most of what recording a decision cost.
#[inline(always)]
fn wakeup() -> u64 {
    let ring = EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let wake_at = if ring / 4 < WAKE_AT_MOST {
        ring / 4
    } else {
        WAKE_AT_MOST
    };
    if waiting >= wake_at {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Starts the event of a decision the slot records (every decision, only denials, or denials
/// with allowed decisions counted: the slot's `Config::record`; and within its
/// `Config::record_rate`), in the scratch map; fills the fields every operation has
/// (`path_len` 0: no path) and returns it to be completed and submitted. `None` when the slot
/// does not record it (or counted it in `TALLIES`): an unrecorded decision costs nothing more.
#[inline(always)]
pub(crate) fn start_event(op: u32, gate: &Gate, verdict: &Verdict) -> Option<Pending> {
    if verdict.decision != action::DENY {
        match gate.config.record {
            record::DENIED => return None,
            record::COUNTED if tally(op, gate, verdict, tally::COUNTED) => return None,
            _ => {}
        }
    }
    if gate.config.record_rate != 0
        && over_rate(gate)
        && tally(op, gate, verdict, tally::SUPPRESSED)
    {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: bpf helpers, and writes into the header of our per-CPU scratch event (8-byte
    // aligned). The path is left alone: a hook may have resolved it there already. The zeroed
    // fields are written one volatile store each: adjacent zero stores would otherwise become
    // a call to `memset`, a byte loop the verifier walks byte by byte on every path that
    // records an event.
    unsafe {
        let event = addr_of_mut!((*scratch).event);
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
        // Straight into the event, zeroed first: kernels before 6.4 do not pad the name after
        // its NUL (a failing call zeroes the buffer itself).
        let comm: *mut [u8; TASK_COMM_LEN] = addr_of_mut!((*event).comm);
        write_volatile(comm.cast::<u64>(), 0);
        write_volatile(comm.cast::<u64>().add(1), 0);
        gen::bpf_get_current_comm(comm.cast(), TASK_COMM_LEN as u32);
        Some(Pending(event))
    }
}

/// Counts the decision in `TALLIES` (why: `kind`, an `oxd_common::tally`) instead of recording
/// it; false when it cannot be counted (the map is full): then it is recorded.
#[inline(always)]
fn tally(op: u32, gate: &Gate, verdict: &Verdict, kind: u8) -> bool {
    let key = TallyKey {
        generation: gate.config.generation,
        rule_id: verdict.rule_id,
        op: op as u16,
        decision: verdict.decision as u8,
        kind,
    };
    if let Some(count) = TALLIES.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the element, touched only by this CPU.
        unsafe { *count += 1 };
    } else if TALLIES.insert(key, 1u64, 0).is_err() {
        return false;
    }
    count(if kind == tally::COUNTED {
        counter::TALLIED
    } else {
        counter::SUPPRESSED
    });
    true
}

/// Whether the slot has sent its `record_rate` records in this rate window on this CPU; counts
/// the record as sent when not.
#[inline(always)]
fn over_rate(gate: &Gate) -> bool {
    let Some(state) = RATE.get_ptr_mut(gate.slot) else {
        return false;
    };
    // SAFETY: bpf helper; this CPU's element of the slot, touched only by this CPU.
    unsafe {
        let window = bpf_ktime_get_boot_ns() >> RATE_WINDOW_SHIFT;
        if (*state).window != window {
            (*state).window = window;
            (*state).sent = 0;
        }
        if (*state).sent >= u64::from(gate.config.record_rate) {
            return true;
        }
        (*state).sent += 1;
    }
    false
}

/// Records that the event's path holds a path of `path_len` bytes (with its NUL), resolved
/// into the scratch's `event.path` (where the path resolvers write) before [`start_event`].
#[inline(always)]
pub(crate) fn record_path(event: *mut Event, path_len: u32) {
    // SAFETY: the event is ours until submitted.
    unsafe { (*event).path_len = path_len };
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
