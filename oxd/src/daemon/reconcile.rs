//! Bringing the kernel and the state file into agreement when the daemon starts: whatever a
//! crash interrupted is completed forward or undone.
//!
//! Two steps. [`plan`] is a pure function of what was saved ([`State`]), what the kernel holds
//! ([`Kernel`]: the generation in each slot, the `CONFINED` map) and which target cgroups exist
//! ([`Cgroups`]); it returns the [`Action`]s to take and the state they lead to. [`apply`] then
//! takes the actions through the enforcer. Every action can be repeated, so a crash while
//! applying a plan is reconciled by the next start the same way.
//!
//! The handlers write the state before each kernel change they make (a new generation is saved
//! before its slot is written; a target before it is attached and confined), except that a
//! replacement saves its new current generation, and a release forgets its target, only after
//! the kernel change. So the kernel may hold more than the state says (a slot being written, a
//! target repointed), never a target the state does not know. The plan follows the state where
//! the kernel holds all of it, and undoes what the state does not account for:
//!
//! - a generation whose slot does not hold it (its write never finished, or it was being
//!   retired) is undone: its slot is cleared and it is forgotten;
//! - a slot holding a generation the state does not know is cleared;
//! - a policy whose current generation was undone falls back to its newest remaining
//!   generation, or is forgotten if none remains;
//! - every target whose cgroup still exists (same path, same inode) gets the cgroup programs
//!   and points at its policy's current slot: this completes a confine, and rolls back a
//!   replacement or a release the state file does not record as done;
//! - a target whose cgroup is gone is no longer confined and is forgotten;
//! - a target the kernel no longer confines and whose policy is gone was being released (or
//!   failed to be confined): the release is finished;
//! - generations that are not their policy's current one (an interrupted replacement's other
//!   half, a policy no target uses any more) are retired once nothing points at them;
//! - a confined cgroup the state does not know stays confined (it cannot be told apart from a
//!   cgroup confined by an earlier daemon with another state directory) and is reported.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::PathBuf,
};

use anyhow::{anyhow, Context as _, Result};
use oxd_common::HALTED_SLOT;

use super::state::State;
use crate::{enforcer::Enforcer, rcu::RcuBarrier};

/// What the kernel holds.
#[derive(Clone, Debug, Default)]
pub(super) struct Kernel {
    /// Slot -> the generation its configuration names (only non-empty slots).
    pub(super) slots: BTreeMap<u32, u64>,
    /// The `CONFINED` map: cgroup id -> slot.
    pub(super) confined: BTreeMap<u64, u32>,
}

/// The cgroup directories at the targets' paths now: path -> inode (the cgroup id of the
/// cgroup there). A path with no cgroup directory (or one that cannot be opened) is absent.
pub(super) type Cgroups = BTreeMap<PathBuf, u64>;

/// One step of a plan. Each is one enforcer call, one state change, or one report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Clear `slot`: `generation` of `policy` was never completely written into it (or was
    /// being retired). The state forgets the generation.
    UndoGeneration {
        slot: u32,
        generation: u64,
        policy: String,
    },
    /// Clear `slot`: it holds `generation`, which the state does not know.
    ClearUnknownSlot { slot: u32, generation: u64 },
    /// The current generation `from` of `policy` was undone: `to` (its newest remaining
    /// generation) is current now, or, with none, the policy is forgotten. State only.
    FallBack {
        policy: String,
        from: u64,
        to: Option<u64>,
    },
    /// Attach the cgroup programs to the target's cgroup (those already pinned are kept).
    AttachNetwork { cgroup: PathBuf, cgroup_id: u64 },
    /// Point the confined cgroup at `slot` (one map update).
    SetConfined { cgroup_id: u64, slot: u32 },
    /// Forget a target whose cgroup is gone (removed, or another cgroup at its path). State
    /// only; [`Action::RemoveConfined`] and [`Action::DetachNetwork`] follow.
    DropTarget { cgroup: PathBuf, cgroup_id: u64 },
    /// Remove the cgroup id from the `CONFINED` map.
    RemoveConfined { cgroup_id: u64 },
    /// Unpin the cgroup programs' links of the cgroup id.
    DetachNetwork { cgroup_id: u64 },
    /// Report a live target whose policy is not loaded: it stays pointing where it does (an
    /// empty slot fails closed).
    PolicyNotLoaded { cgroup: PathBuf, policy: String },
    /// Forget a live target that the kernel no longer confines and whose policy is gone: a
    /// release (or a failed confine) lifted its confinement and retired its policy, and the
    /// daemon stopped before saving the state. State only; [`Action::DetachNetwork`] follows.
    FinishRelease { cgroup: PathBuf, cgroup_id: u64 },
    /// Clear the slot of a generation nothing points at any more, once every program that
    /// could still be reading it has finished. The state forgets it.
    RetireGeneration { generation: u64, slot: u32 },
    /// Report a confined cgroup the state does not know: it stays confined.
    UnknownConfined { cgroup_id: u64, slot: u32 },
}

/// What reconciling does, and the state it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) actions: Vec<Action>,
    pub(super) state: State,
}

impl Plan {
    /// The generations the plan retires: they were complete, so decisions made under them
    /// may still be waiting in the ring buffer.
    pub(super) fn retired(&self) -> impl Iterator<Item = u64> + '_ {
        self.actions.iter().filter_map(|a| match a {
            Action::RetireGeneration { generation, .. } => Some(*generation),
            _ => None,
        })
    }
}

/// What to do to bring `kernel` and `saved` into agreement, given which target cgroups exist.
/// No side effects.
#[expect(
    clippy::too_many_lines,
    reason = "one pass per kind of crash damage, in the order they must be repaired"
)]
pub(super) fn plan(saved: &State, kernel: &Kernel, cgroups: &Cgroups) -> Plan {
    let mut actions = Vec::new();
    let mut state = saved.clone();

    // Generations whose slot was never completely written are undone.
    let (complete, partial): (Vec<_>, Vec<_>) = state
        .generations
        .drain(..)
        .partition(|g| kernel.slots.get(&g.slot) == Some(&g.generation));
    state.generations = complete;
    for g in partial {
        actions.push(Action::UndoGeneration {
            slot: g.slot,
            generation: g.generation,
            policy: g.name,
        });
    }
    // Slots the state does not know (cannot normally happen: the state is written first).
    for (&slot, &generation) in &kernel.slots {
        if state.gen(generation).is_none() {
            actions.push(Action::ClearUnknownSlot { slot, generation });
        }
    }
    // A policy whose current generation is gone falls back to its newest remaining one.
    let names: Vec<String> = state.current.keys().cloned().collect();
    for name in names {
        if state.current_gen(&name).is_some() {
            continue;
        }
        let from = state.current[&name];
        let to = state
            .generations
            .iter()
            .filter(|g| g.name == name)
            .map(|g| g.generation)
            .max();
        match to {
            Some(g) => state.current.insert(name.clone(), g),
            None => state.current.remove(&name),
        };
        actions.push(Action::FallBack {
            policy: name,
            from,
            to,
        });
    }
    let not_current: Vec<(u64, u32)> = state
        .generations
        .iter()
        .filter(|g| state.current.get(&g.name) != Some(&g.generation))
        .map(|g| (g.generation, g.slot))
        .collect();
    // Every target points at its policy's current generation (completing a confine, rolling
    // back an unrecorded replacement), or at the halted slot if the kill switch stopped it,
    // and has its cgroup programs attached; targets whose cgroup is gone are dropped.
    for target in &saved.targets {
        let slot = state.current_gen(&target.policy).map(|g| {
            if target.halted.is_some() {
                HALTED_SLOT
            } else {
                g.slot
            }
        });
        let alive = cgroups.get(&target.cgroup) == Some(&target.cgroup_id);
        match (slot, alive) {
            (Some(slot), true) => {
                actions.push(Action::AttachNetwork {
                    cgroup: target.cgroup.clone(),
                    cgroup_id: target.cgroup_id,
                });
                if kernel.confined.get(&target.cgroup_id) != Some(&slot) {
                    actions.push(Action::SetConfined {
                        cgroup_id: target.cgroup_id,
                        slot,
                    });
                }
            }
            (_, false) => {
                actions.push(Action::DropTarget {
                    cgroup: target.cgroup.clone(),
                    cgroup_id: target.cgroup_id,
                });
                actions.push(Action::RemoveConfined {
                    cgroup_id: target.cgroup_id,
                });
                actions.push(Action::DetachNetwork {
                    cgroup_id: target.cgroup_id,
                });
                state.targets.retain(|t| t.cgroup_id != target.cgroup_id);
            }
            (None, true) if !kernel.confined.contains_key(&target.cgroup_id) => {
                actions.push(Action::FinishRelease {
                    cgroup: target.cgroup.clone(),
                    cgroup_id: target.cgroup_id,
                });
                actions.push(Action::DetachNetwork {
                    cgroup_id: target.cgroup_id,
                });
                state.targets.retain(|t| t.cgroup_id != target.cgroup_id);
            }
            (None, true) => actions.push(Action::PolicyNotLoaded {
                cgroup: target.cgroup.clone(),
                policy: target.policy.clone(),
            }),
        }
    }
    // Generations replaced (or released) just before the daemon stopped: nothing points at
    // them any more.
    for (generation, slot) in not_current {
        actions.push(Action::RetireGeneration { generation, slot });
        state.generations.retain(|g| g.generation != generation);
    }
    // (Targets dropped above were known: they are no longer confined.)
    for (&cgroup_id, &slot) in &kernel.confined {
        if !saved.targets.iter().any(|t| t.cgroup_id == cgroup_id) {
            actions.push(Action::UnknownConfined { cgroup_id, slot });
        }
    }
    Plan { actions, state }
}

/// Takes `actions` through the enforcer. `dirs` holds the target cgroups open, by path (the
/// ones [`Cgroups`] lists). State-only actions are reported here and change nothing.
pub(super) fn apply(
    actions: &[Action],
    enforcer: &mut Enforcer,
    barrier: &RcuBarrier,
    dirs: &HashMap<PathBuf, File>,
) -> Result<()> {
    for action in actions {
        match action {
            Action::UndoGeneration {
                slot,
                generation,
                policy,
            } => {
                tracing::warn!(
                    generation,
                    "policy {policy} was not completely loaded before the daemon stopped: undone"
                );
                enforcer.clear_slot(*slot)?;
            }
            Action::ClearUnknownSlot { slot, generation } => {
                tracing::warn!(
                    slot,
                    generation,
                    "clearing a policy slot unknown to the state"
                );
                enforcer.clear_slot(*slot)?;
            }
            Action::FallBack { policy, from, to } => {
                if let Some(to) = to {
                    tracing::warn!(
                        "policy {policy}: generation {from} is gone, generation {to} is current"
                    );
                } else {
                    tracing::warn!(
                        "policy {policy}: generation {from} is gone and no other remains"
                    );
                }
            }
            Action::AttachNetwork { cgroup, cgroup_id } => {
                let dir = dirs
                    .get(cgroup)
                    .ok_or_else(|| anyhow!("cgroup {} is not open", cgroup.display()))?;
                let label = cgroup.display().to_string();
                enforcer.attach_network(dir, *cgroup_id, &label)?;
            }
            Action::SetConfined { cgroup_id, slot } => enforcer.set_confined(*cgroup_id, *slot)?,
            Action::DropTarget { cgroup, .. } => {
                tracing::warn!("cgroup {} is gone: no longer confined", cgroup.display());
            }
            Action::RemoveConfined { cgroup_id } => {
                enforcer.remove_confined(*cgroup_id)?;
                if let Err(e) = enforcer.forget_budgets(*cgroup_id, &[]) {
                    tracing::warn!("cannot forget a released target's budget counters: {e:#}");
                }
            }
            Action::DetachNetwork { cgroup_id } => enforcer.detach_network(*cgroup_id)?,
            Action::PolicyNotLoaded { cgroup, policy } => tracing::error!(
                "cgroup {} is confined under policy {policy} which is not loaded: its actions \
                 are denied until it is released or confined again",
                cgroup.display()
            ),
            Action::FinishRelease { cgroup, .. } => tracing::warn!(
                "cgroup {} was being released when the daemon stopped: released",
                cgroup.display()
            ),
            Action::RetireGeneration { slot, .. } => {
                barrier
                    .wait()
                    .context("cannot wait for running BPF programs")?;
                enforcer.clear_slot(*slot)?;
            }
            Action::UnknownConfined { cgroup_id, slot } => tracing::warn!(
                cgroup_id,
                slot,
                "a confined cgroup is unknown to the state file: it stays confined"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        super::state::{GenState, TargetState, STATE_VERSION},
        Action::*,
        *,
    };

    fn gen(generation: u64, slot: u32, name: &str) -> GenState {
        GenState {
            generation,
            slot,
            name: name.to_owned(),
            sha256: format!("sha-{generation}"),
            path: PathBuf::from(format!("{name}.toml")),
            text: format!("name = \"{name}\"\n"),
        }
    }

    fn target(cgroup: &str, cgroup_id: u64, policy: &str) -> TargetState {
        TargetState {
            cgroup: PathBuf::from(cgroup),
            cgroup_id,
            policy: policy.to_owned(),
            halted: None,
            pids_max_before: None,
            refused_reported: 0,
        }
    }

    fn state(
        generations: Vec<GenState>,
        current: &[(&str, u64)],
        targets: Vec<TargetState>,
    ) -> State {
        State {
            version: STATE_VERSION,
            generation: generations.iter().map(|g| g.generation).max().unwrap_or(0),
            reported_lost: 0,
            tallies_written: Vec::new(),
            generations,
            current: current.iter().map(|(n, g)| ((*n).to_owned(), *g)).collect(),
            targets,
            next_grant: 1,
        }
    }

    fn kernel(slots: &[(u32, u64)], confined: &[(u64, u32)]) -> Kernel {
        Kernel {
            slots: slots.iter().copied().collect(),
            confined: confined.iter().copied().collect(),
        }
    }

    fn cgroups(live: &[(&str, u64)]) -> Cgroups {
        live.iter().map(|(p, id)| (PathBuf::from(p), *id)).collect()
    }

    const A: &str = "/sys/fs/cgroup/a";
    const B: &str = "/sys/fs/cgroup/b";

    fn attach(cgroup: &str, cgroup_id: u64) -> Action {
        AttachNetwork {
            cgroup: PathBuf::from(cgroup),
            cgroup_id,
        }
    }

    /// Applying a plan to the kernel it was made from, then planning again, finds nothing to
    /// change: every crash point converges in one start.
    fn assert_converges(saved: &State, kernel: &Kernel, live: &Cgroups) {
        let first = plan(saved, kernel, live);
        let mut after = kernel.clone();
        for action in &first.actions {
            match action {
                UndoGeneration { slot, .. }
                | ClearUnknownSlot { slot, .. }
                | RetireGeneration { slot, .. } => {
                    after.slots.remove(slot);
                }
                SetConfined { cgroup_id, slot } => {
                    after.confined.insert(*cgroup_id, *slot);
                }
                RemoveConfined { cgroup_id } => {
                    after.confined.remove(cgroup_id);
                }
                _ => {}
            }
        }
        let second = plan(&first.state, &after, live);
        assert_eq!(second.state, first.state, "a second plan changes the state");
        let changes: Vec<&Action> = second
            .actions
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    AttachNetwork { .. } | UnknownConfined { .. } | PolicyNotLoaded { .. }
                )
            })
            .collect();
        assert!(
            changes.is_empty(),
            "a second plan still changes {changes:?}"
        );
    }

    #[test]
    fn a_consistent_state_only_reattaches() {
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "q")],
            &[("p", 1), ("q", 2)],
            vec![target(A, 10, "p"), target(B, 11, "q")],
        );
        let k = kernel(&[(0, 1), (1, 2)], &[(10, 0), (11, 1)]);
        let live = cgroups(&[(A, 10), (B, 11)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(p.actions, vec![attach(A, 10), attach(B, 11)]);
        assert_eq!(p.state, saved);
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_halted_target_is_halted_again_whatever_the_kernel_says() {
        // The switch saved before its map update, or the map was re-created since.
        let mut halted = target(A, 10, "p");
        halted.halted = Some(crate::control::Halt::Freeze);
        let saved = state(
            vec![gen(1, 0, "p")],
            &[("p", 1)],
            vec![halted, target(B, 11, "p")],
        );
        let k = kernel(&[(0, 1)], &[(10, 0), (11, 0)]);
        let live = cgroups(&[(A, 10), (B, 11)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                SetConfined {
                    cgroup_id: 10,
                    slot: HALTED_SLOT
                },
                attach(B, 11),
            ]
        );
        assert_eq!(p.state, saved);
        // Halted already: nothing to change but the attachments.
        let k = kernel(&[(0, 1)], &[(10, HALTED_SLOT), (11, 0)]);
        assert_eq!(
            plan(&saved, &k, &live).actions,
            vec![attach(A, 10), attach(B, 11)]
        );
    }

    #[test]
    fn a_generation_recorded_but_never_written_is_undone() {
        // Crash after load_generation saved generation 2, before its slot was written (or
        // half-way: the configuration, which names the generation, is written last).
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p")],
        );
        let k = kernel(&[(0, 1)], &[(10, 0)]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                UndoGeneration {
                    slot: 1,
                    generation: 2,
                    policy: "p".into()
                },
                attach(A, 10),
            ]
        );
        assert_eq!(p.state.generations, vec![gen(1, 0, "p")]);
        assert_eq!(p.state.current, saved.current);
        assert_eq!(p.state.generation, 2, "a generation number is never reused");
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_new_policy_recorded_but_never_written_is_forgotten() {
        // Crash in the first confine under a new policy, while its slot was written: the
        // state has the generation but neither a current entry nor a target for it yet.
        let saved = state(vec![gen(1, 0, "p")], &[], vec![]);
        let k = kernel(&[], &[]);
        let p = plan(&saved, &k, &Cgroups::new());
        assert_eq!(
            p.actions,
            vec![UndoGeneration {
                slot: 0,
                generation: 1,
                policy: "p".into()
            }]
        );
        assert!(p.state.generations.is_empty());
        assert_converges(&saved, &k, &Cgroups::new());
    }

    #[test]
    fn a_slot_unknown_to_the_state_is_cleared() {
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[(0, 1), (5, 9)], &[(10, 0)]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                ClearUnknownSlot {
                    slot: 5,
                    generation: 9
                },
                attach(A, 10)
            ]
        );
        assert_eq!(p.state, saved);
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_loaded_policy_never_confined_is_retired() {
        // Crash in a first confine after the slot was written, before the target was saved.
        let saved = state(vec![gen(1, 0, "p")], &[], vec![]);
        let k = kernel(&[(0, 1)], &[]);
        let p = plan(&saved, &k, &Cgroups::new());
        assert_eq!(
            p.actions,
            vec![RetireGeneration {
                generation: 1,
                slot: 0
            }]
        );
        assert_eq!(p.retired().collect::<Vec<_>>(), vec![1]);
        assert!(p.state.generations.is_empty());
        assert_converges(&saved, &k, &Cgroups::new());
    }

    #[test]
    fn a_confine_saved_but_not_yet_applied_is_completed() {
        // Crash after the confine saved its target, before attach_network and set_confined.
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[(0, 1)], &[]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                SetConfined {
                    cgroup_id: 10,
                    slot: 0
                }
            ]
        );
        assert_eq!(p.state, saved);
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_replacement_written_but_not_repointed_is_rolled_back() {
        // Crash in a replace after the new generation's slot was written, before (or while)
        // the targets were repointed. The state still names generation 1 current (it is saved
        // after the targets are repointed), so the targets point at it and 2 is retired.
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p"), target(B, 11, "p")],
        );
        // B was already repointed, A not yet.
        let k = kernel(&[(0, 1), (1, 2)], &[(10, 0), (11, 1)]);
        let live = cgroups(&[(A, 10), (B, 11)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                attach(B, 11),
                SetConfined {
                    cgroup_id: 11,
                    slot: 0
                },
                RetireGeneration {
                    generation: 2,
                    slot: 1
                },
            ]
        );
        assert_eq!(p.state.generations, vec![gen(1, 0, "p")]);
        assert_eq!(p.state.current.get("p"), Some(&1));
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_replacement_repointed_but_not_saved_is_rolled_back_while_the_old_slot_is_intact() {
        // Crash after every target was repointed to 2, before the old slot was cleared.
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p")],
        );
        let k = kernel(&[(0, 1), (1, 2)], &[(10, 1)]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                SetConfined {
                    cgroup_id: 10,
                    slot: 0
                },
                RetireGeneration {
                    generation: 2,
                    slot: 1
                },
            ]
        );
        assert_eq!(p.state.current.get("p"), Some(&1));
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_replacement_whose_old_slot_was_cleared_is_completed() {
        // Crash after the old generation was retired (its slot cleared), before the state
        // was saved: the current generation falls back to the newest remaining one, 2, which
        // every target already points at.
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p")],
        );
        let k = kernel(&[(1, 2)], &[(10, 1)]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                UndoGeneration {
                    slot: 0,
                    generation: 1,
                    policy: "p".into()
                },
                FallBack {
                    policy: "p".into(),
                    from: 1,
                    to: Some(2)
                },
                attach(A, 10),
            ]
        );
        assert_eq!(p.state.generations, vec![gen(2, 1, "p")]);
        assert_eq!(p.state.current.get("p"), Some(&2));
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_replacement_whose_old_slot_was_half_cleared_is_completed() {
        // clear_slot empties the configuration first: the slot is empty for the plan even if
        // some of its rules were left.
        let saved = state(
            vec![gen(1, 0, "p"), gen(2, 1, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p")],
        );
        let k = kernel(&[(1, 2)], &[(10, 1)]);
        let p = plan(&saved, &k, &cgroups(&[(A, 10)]));
        assert!(p.actions.contains(&UndoGeneration {
            slot: 0,
            generation: 1,
            policy: "p".into()
        }));
        assert_eq!(p.state.current.get("p"), Some(&2));
    }

    #[test]
    fn a_release_interrupted_before_the_state_save_is_rolled_back() {
        // Crash in a release after remove_confined (and detach_network), before the state
        // was saved: the state still has the target, which is confined again (fail closed).
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[(0, 1)], &[]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                SetConfined {
                    cgroup_id: 10,
                    slot: 0
                }
            ]
        );
        assert_eq!(p.state, saved);
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_release_interrupted_after_retiring_its_policy_is_finished() {
        // Crash in a release after remove_confined, detach_network and the retirement of the
        // policy it was the last user of (its slot cleared), before the state was saved. The
        // target is not confined any more and cannot be again: the release is finished.
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[], &[]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                UndoGeneration {
                    slot: 0,
                    generation: 1,
                    policy: "p".into()
                },
                FallBack {
                    policy: "p".into(),
                    from: 1,
                    to: None
                },
                FinishRelease {
                    cgroup: A.into(),
                    cgroup_id: 10
                },
                DetachNetwork { cgroup_id: 10 },
            ]
        );
        assert!(p.state.targets.is_empty());
        assert!(p.state.generations.is_empty());
        assert!(p.state.current.is_empty());
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_target_whose_cgroup_is_gone_is_dropped_removed_and_detached() {
        let saved = state(
            vec![gen(1, 0, "p")],
            &[("p", 1)],
            vec![target(A, 10, "p"), target(B, 11, "p")],
        );
        let k = kernel(&[(0, 1)], &[(10, 0), (11, 0)]);
        let live = cgroups(&[(B, 11)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                DropTarget {
                    cgroup: A.into(),
                    cgroup_id: 10
                },
                RemoveConfined { cgroup_id: 10 },
                DetachNetwork { cgroup_id: 10 },
                attach(B, 11),
            ]
        );
        assert_eq!(p.state.targets, vec![target(B, 11, "p")]);
        assert_eq!(p.state.generations, saved.generations, "B still uses p");
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_cgroup_id_at_a_reused_path_is_another_cgroup() {
        // The cgroup was removed and a new one made at the same path: its inode differs, so
        // the target is gone and the new cgroup is not confined.
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[(0, 1)], &[(10, 0)]);
        let live = cgroups(&[(A, 99)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                DropTarget {
                    cgroup: A.into(),
                    cgroup_id: 10
                },
                RemoveConfined { cgroup_id: 10 },
                DetachNetwork { cgroup_id: 10 },
            ]
        );
        assert!(p.state.targets.is_empty());
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_policy_whose_current_generation_is_missing_falls_back_or_is_forgotten() {
        // p's current generation 3 is gone; 1 and 2 remain: 2, the newest, becomes current
        // (and 1 is retired). q's only generation is gone: q is forgotten, and its target
        // stays pointing where it does.
        let saved = state(
            vec![
                gen(1, 0, "p"),
                gen(2, 1, "p"),
                gen(3, 2, "p"),
                gen(4, 3, "q"),
            ],
            &[("p", 3), ("q", 4)],
            vec![target(A, 10, "p"), target(B, 11, "q")],
        );
        let k = kernel(&[(0, 1), (1, 2)], &[(10, 2), (11, 3)]);
        let live = cgroups(&[(A, 10), (B, 11)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                UndoGeneration {
                    slot: 2,
                    generation: 3,
                    policy: "p".into()
                },
                UndoGeneration {
                    slot: 3,
                    generation: 4,
                    policy: "q".into()
                },
                FallBack {
                    policy: "p".into(),
                    from: 3,
                    to: Some(2)
                },
                FallBack {
                    policy: "q".into(),
                    from: 4,
                    to: None
                },
                attach(A, 10),
                SetConfined {
                    cgroup_id: 10,
                    slot: 1
                },
                PolicyNotLoaded {
                    cgroup: B.into(),
                    policy: "q".into()
                },
                RetireGeneration {
                    generation: 1,
                    slot: 0
                },
            ]
        );
        assert_eq!(p.state.current, BTreeMap::from([("p".to_owned(), 2)]));
        assert_eq!(p.state.generations, vec![gen(2, 1, "p")]);
        assert_eq!(p.state.targets, saved.targets, "B's target is kept");
        assert_converges(&saved, &k, &live);
    }

    #[test]
    fn a_confined_cgroup_unknown_to_the_state_is_left_and_reported() {
        let saved = state(vec![gen(1, 0, "p")], &[("p", 1)], vec![target(A, 10, "p")]);
        let k = kernel(&[(0, 1)], &[(10, 0), (77, 0)]);
        let live = cgroups(&[(A, 10)]);
        let p = plan(&saved, &k, &live);
        assert_eq!(
            p.actions,
            vec![
                attach(A, 10),
                UnknownConfined {
                    cgroup_id: 77,
                    slot: 0
                }
            ]
        );
        assert_eq!(p.state, saved);
        assert!(!p
            .actions
            .iter()
            .any(|a| matches!(a, RemoveConfined { .. } | SetConfined { .. })));
    }

    #[test]
    fn an_empty_state_and_kernel_need_nothing() {
        let p = plan(&State::default(), &Kernel::default(), &Cgroups::new());
        assert!(p.actions.is_empty());
        assert_eq!(p.state, State::default());
    }
}
