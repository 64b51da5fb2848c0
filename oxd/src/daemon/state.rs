//! The daemon's persistent state, `--state-dir/state.json`: the loaded generations (with their
//! policy text), the targets, and the count of lost decisions already reported.
//!
//! It is written atomically (a temporary file, synced, renamed over the old one, the directory
//! synced) and, by the request handlers, before each kernel change that it describes, so a
//! crash at any point leaves a state that [`super::reconcile`] can complete forward or undo.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use oxd_common::MAX_POLICY_SLOTS;
use serde::{Deserialize, Serialize};

pub(super) const STATE_VERSION: u32 = 1;

/// One generation occupying a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GenState {
    pub(super) generation: u64,
    pub(super) slot: u32,
    pub(super) name: String,
    pub(super) sha256: String,
    pub(super) path: PathBuf,
    pub(super) text: String,
}

/// One confined cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TargetState {
    pub(super) cgroup: PathBuf,
    /// The cgroup directory's inode number, which is the kernel's cgroup id.
    pub(super) cgroup_id: u64,
    /// The name of the policy it is confined under.
    pub(super) policy: String,
    /// How the kill switch stopped it, if it did: its `CONFINED` value is then
    /// [`oxd_common::HALTED_SLOT`], whatever its policy's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) halted: Option<crate::control::Halt>,
    /// What the cgroup's `pids.max` was before its policy's `max_processes` set it (restored
    /// when the limit goes); `None` while oxd has not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pids_max_before: Option<String>,
    /// The forks the limit refused that `limit` records already report (the kernel's count).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) refused_reported: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One of the kernel's tallies ([`oxd_common::TallyKey`]) and the total already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TallyState {
    generation: u64,
    rule_id: u32,
    op: u16,
    decision: u8,
    kind: u8,
    written: u64,
}

impl TallyState {
    pub(super) fn all(tallies: &[(oxd_common::TallyKey, u64)]) -> Vec<Self> {
        tallies
            .iter()
            .map(|(key, written)| Self {
                generation: key.generation,
                rule_id: key.rule_id,
                op: key.op,
                decision: key.decision,
                kind: key.kind,
                written: *written,
            })
            .collect()
    }

    pub(super) fn keys(states: &[Self]) -> Vec<(oxd_common::TallyKey, u64)> {
        states
            .iter()
            .map(|s| {
                let key = oxd_common::TallyKey {
                    generation: s.generation,
                    rule_id: s.rule_id,
                    op: s.op,
                    decision: s.decision,
                    kind: s.kind,
                };
                (key, s.written)
            })
            .collect()
    }
}

/// The daemon's persistent state (`state.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) version: u32,
    /// The newest generation handed out.
    pub(super) generation: u64,
    /// Lost decisions already reported in the audit log (of the pinned counters).
    pub(super) reported_lost: u64,
    /// The total of each of the pinned tallies already written as `tally` records.
    #[serde(default)]
    pub(super) tallies_written: Vec<TallyState>,
    /// Every generation occupying a slot (current ones, and one being replaced).
    pub(super) generations: Vec<GenState>,
    /// Policy name -> its current generation.
    pub(super) current: BTreeMap<String, u64>,
    pub(super) targets: Vec<TargetState>,
    /// The number the next grant gets (numbers start at 1 and are never reused).
    #[serde(default)]
    pub(super) next_grant: u32,
}

impl State {
    /// The state at `path`. Without pinned maps (`adopted` false) there is nothing to adopt
    /// and the file, if any, is ignored; with them, the file must exist: a daemon that does not
    /// know what is pinned must not touch it.
    pub(super) fn load(path: &Path, adopted: bool, pin_dir: &Path) -> Result<Self> {
        let mut state: Self = match fs::read(path) {
            Ok(bytes) if adopted => serde_json::from_slice(&bytes)
                .with_context(|| format!("cannot parse {}", path.display()))?,
            Ok(_) => {
                tracing::warn!(
                    "no pinned maps under {}: starting afresh, ignoring {}",
                    pin_dir.display(),
                    path.display()
                );
                Self::default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if adopted {
                    bail!(
                        "enforcement is pinned under {} but there is no state file {}, so this \
                         daemon cannot know what it enforces. Give the --state-dir of the daemon \
                         that pinned it, or lift that enforcement by removing the pins (`rm -r \
                         {}`: confined processes are then unconfined) and start again",
                        pin_dir.display(),
                        path.display(),
                        pin_dir.display()
                    );
                }
                Self::default()
            }
            Err(e) => return Err(e).context(format!("cannot read {}", path.display())),
        };
        state.version = STATE_VERSION;
        Ok(state)
    }

    /// Writes the state to `path`, atomically.
    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).context("cannot encode the state")?;
        write_atomically(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    pub(super) fn gen(&self, generation: u64) -> Option<&GenState> {
        self.generations.iter().find(|g| g.generation == generation)
    }

    /// The current generation of policy `name`, if it is loaded.
    /// Where the target with this cgroup id is in [`Self::targets`].
    pub(super) fn target_index(&self, cgroup_id: u64) -> Option<usize> {
        self.targets.iter().position(|t| t.cgroup_id == cgroup_id)
    }

    pub(super) fn current_gen(&self, name: &str) -> Option<&GenState> {
        self.current.get(name).and_then(|g| self.gen(*g))
    }

    /// A slot no generation occupies.
    pub(super) fn free_slot(&self) -> Result<u32> {
        let used: Vec<u32> = self.generations.iter().map(|g| g.slot).collect();
        (0..MAX_POLICY_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or_else(|| {
                anyhow!(
                    "all {MAX_POLICY_SLOTS} policy slots hold policies in use: release targets or \
                     replace policies rather than loading new ones"
                )
            })
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: STATE_VERSION,
            generation: 3,
            reported_lost: 7,
            tallies_written: TallyState::all(&[(
                oxd_common::TallyKey {
                    generation: 3,
                    rule_id: 2,
                    op: 1,
                    decision: 1,
                    kind: 1,
                },
                40,
            )]),
            generations: vec![GenState {
                generation: 3,
                slot: 1,
                name: "p".into(),
                sha256: "s".into(),
                path: "p.toml".into(),
                text: "name = \"p\"\n".into(),
            }],
            current: BTreeMap::from([("p".to_owned(), 3)]),
            targets: vec![TargetState {
                cgroup: "/sys/fs/cgroup/a".into(),
                cgroup_id: 42,
                policy: "p".into(),
                halted: Some(crate::control::Halt::Freeze),
                pids_max_before: Some("max".into()),
                refused_reported: 3,
            }],
            next_grant: 5,
        }
    }

    #[test]
    fn saved_state_loads_back_when_adopted_and_is_ignored_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let state = sample();
        state.save(&path).unwrap();
        assert!(
            !path.with_extension("tmp").exists(),
            "no temporary file left"
        );
        assert_eq!(State::load(&path, true, dir.path()).unwrap(), state);
        let fresh = State::load(&path, false, dir.path()).unwrap();
        assert_eq!(
            fresh,
            State {
                version: STATE_VERSION,
                ..State::default()
            }
        );
    }

    #[test]
    fn pinned_maps_without_a_state_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let err = State::load(&path, true, Path::new("/sys/fs/bpf/oxd/v1")).unwrap_err();
        assert!(format!("{err:#}").contains("no state file"), "{err:#}");
        assert_eq!(State::load(&path, false, dir.path()).unwrap().generation, 0);
    }

    #[test]
    fn free_slot_is_the_lowest_unused_one() {
        let mut state = sample();
        assert_eq!(state.free_slot().unwrap(), 0);
        let mut g = state.generations[0].clone();
        g.slot = 0;
        g.generation = 4;
        state.generations.push(g);
        assert_eq!(state.free_slot().unwrap(), 2);
        assert_eq!(state.current_gen("p").map(|g| g.slot), Some(1));
        assert!(state.current_gen("q").is_none());
    }
}
