//! The gate every hook passes first: is the current task confined, by which policy slot, and
//! does that policy govern the hook's category?

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_loop};
use oxd_common::{mode, reason, Config, HALTED_SLOT, MAX_CGROUP_DEPTH, MAX_POLICY_SLOTS};

use crate::maps::{CONFIG, CONFINED};

/// [`confined_slot`] of a task that is not confined.
const NOT_CONFINED: u32 = u32::MAX;

/// What [`Gate::open`] found. Plain, always-initialised fields (no `Option`): an `Option`'s
/// undefined payload lets the compiler read registers the verifier considers uninitialised.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Gate {
    /// Whether the hook decides (and records) the action. False when the task is not confined,
    /// or its policy does not govern the category: the hook leaves the action alone.
    pub(crate) decide: bool,
    /// Whether [`Self::config`] is the slot's policy. False when the slot is empty or cannot be
    /// read: then every decision fails closed, with [`Self::missing_reason`].
    pub(crate) configured: bool,
    /// The task's policy slot.
    pub(crate) slot: u32,
    /// The confined target: the cgroup whose `CONFINED` entry gave the slot (the task's own, or
    /// its nearest confined ancestor). Budgets are counted per target.
    pub(crate) target: u64,
    /// The slot's configuration, read once so one decision sees one generation; [`NO_CONFIG`]
    /// when not [`Self::configured`].
    pub(crate) config: Config,
}

/// The configuration of a slot without a policy: generation 0 and enforcing, so a decision
/// that fails closed is recorded as such and enforced.
const NO_CONFIG: Config = Config {
    generation: 0,
    governs: 0,
    mode: mode::ENFORCE,
    exec_default: 0,
    net_default: 0,
    net_rule_count: 0,
    file_read_default: 0,
    file_write_default: 0,
    record: 0,
    net_icmp: 0,
    net_icmp_rule: 0,
    net_raw: 0,
    net_raw_rule: 0,
    namespaces: 0,
    namespaces_rule: 0,
    ipc_unix_default: 0,
    record_rate: 0,
    exec_budget: 0,
    exec_budget_rule: 0,
};

impl Gate {
    const LEAVE_ALONE: Self = Self {
        decide: false,
        configured: false,
        slot: NOT_CONFINED,
        target: 0,
        config: NO_CONFIG,
    };

    /// The gate for an action of `category` (a [`oxd_common::governs`] bit) by the current
    /// task. An empty or unreadable slot governs every category: it fails closed.
    #[inline(always)]
    pub(crate) fn open(category: u32) -> Self {
        let (slot, target) = confined_slot();
        if slot == NOT_CONFINED {
            return Self::LEAVE_ALONE;
        }
        match CONFIG.get(slot) {
            Some(config) if config.generation != 0 => Self {
                decide: config.governs & category != 0,
                configured: true,
                slot,
                target,
                config: *config,
            },
            _ => Self {
                decide: true,
                configured: false,
                slot,
                target,
                config: NO_CONFIG,
            },
        }
    }

    /// The policy's mode: [`oxd_common::mode::ENFORCE`] when the slot has no policy.
    #[inline(always)]
    pub(crate) fn mode(&self) -> u32 {
        self.config.mode
    }

    /// Why a decision without a configuration failed closed.
    #[inline(always)]
    pub(crate) fn missing_reason(&self) -> u32 {
        if self.slot == HALTED_SLOT {
            reason::HALTED
        } else if self.slot < MAX_POLICY_SLOTS {
            reason::EMPTY_SLOT
        } else {
            reason::NO_CONFIG
        }
    }
}

/// The policy slot of the current task: that of its cgroup if confined, else that of the
/// nearest confined ancestor (the one a cgroup the agent created inherits), else
/// [`NOT_CONFINED`]; and the cgroup whose entry gave it. The slot is read once per decision, so
/// one decision sees one generation.
#[inline(always)]
fn confined_slot() -> (u32, u64) {
    // SAFETY: helper calls without pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the key and value are plain integers.
    if let Some(slot) = unsafe { CONFINED.get(cgroup_id) } {
        return (*slot, cgroup_id);
    }
    // The nearest confined ancestor decides: walk the ancestors from the top level (1, just
    // below the root) down to the task's parent, keeping the deepest confined one. One level
    // per `bpf_loop` iteration: the verifier checks a level once, in every program.
    let mut search = SlotSearch {
        cgroup_id,
        found: NOT_CONFINED,
        found_id: 0,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = slot_step;
    // SAFETY: `search` outlives the call; the callback only touches it through the pointer.
    let ret = unsafe {
        bpf_loop(
            MAX_CGROUP_DEPTH as u32 - 1,
            step as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    if ret < 0 {
        // Cannot happen (the arguments are valid); a slot no policy has fails closed.
        return (MAX_POLICY_SLOTS, cgroup_id);
    }
    (search.found, search.found_id)
}

/// What [`slot_step`] needs from the last step, on the caller's stack.
#[repr(C)]
struct SlotSearch {
    cgroup_id: u64,
    /// The cgroup id of the deepest confined ancestor so far.
    found_id: u64,
    /// Its slot, [`NOT_CONFINED`] if none.
    found: u32,
}

/// One level of [`confined_slot`]'s walk: 1 to stop (at the task's own cgroup), 0 to go on.
#[inline(never)]
extern "C" fn slot_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `SlotSearch` that `confined_slot` passed to `bpf_loop`.
    let search = unsafe { &mut *ctx.cast::<SlotSearch>() };
    // SAFETY: helper call without pointer arguments.
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(index as i32 + 1) };
    if ancestor == 0 || ancestor == search.cgroup_id {
        return 1;
    }
    // SAFETY: the key and value are plain integers.
    if let Some(slot) = unsafe { CONFINED.get(ancestor) } {
        search.found = *slot;
        search.found_id = ancestor;
    }
    0
}
