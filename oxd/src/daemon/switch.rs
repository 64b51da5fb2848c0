//! The kill switch: `oxd ctl deny-all|freeze|kill` halts a confined target, `oxd ctl resume`
//! lifts it.
//!
//! Halting points the target's `CONFINED` entry at [`HALTED_SLOT`], a slot no policy can have:
//! every hook then takes the path it takes for an empty slot and denies, so the next action of
//! any task of the target (or of a cgroup below it) is denied, recorded with the reason
//! `halted`. That is one map update, made before anything else. `freeze` then writes the
//! target's `cgroup.freeze` (its processes stop running, what they hold included: open files
//! and connections), `kill` its `cgroup.kill`. The state file says the target is halted, so a
//! restarted daemon halts it again, and a replacement of its policy leaves it halted.
//!
//! Each switch and resume is written into the audit log (a `kill-switch` record) before the
//! answer.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use oxd_common::HALTED_SLOT;

use super::Daemon;
use crate::{
    audit::{Note, SwitchRecord},
    cgroup::flat_keyed,
    control::{Halt, Target},
};

/// How long the switch waits for a freeze or a kill to complete before answering.
const SETTLE: Duration = Duration::from_secs(2);

/// The stronger of two halts: a target frozen and then switched to deny-all stays frozen.
fn stronger(a: Option<Halt>, b: Halt) -> Halt {
    let rank = |h: Halt| match h {
        Halt::DenyAll => 0,
        Halt::Freeze => 1,
        Halt::Kill => 2,
    };
    match a {
        Some(a) if rank(a) > rank(b) => a,
        _ => b,
    }
}

/// The value of `key` in a cgroup's `cgroup.events` (`populated`, `frozen`).
fn cgroup_event(cgroup: &Path, key: &str) -> Option<bool> {
    flat_keyed(cgroup, "cgroup.events", key).map(|v| v == "1")
}

/// Waits up to [`SETTLE`] for `cgroup.events` to say `key` is `want`.
fn settle(cgroup: &Path, key: &str, want: bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    loop {
        if cgroup_event(cgroup, key) == Some(want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_control(cgroup: &Path, file: &str, value: &str) -> Result<()> {
    let path = cgroup.join(file);
    fs::write(&path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
}

/// Freezes the cgroup's processes (and those of every cgroup below it); what happened.
fn freeze(cgroup: &Path) -> String {
    match write_control(cgroup, "cgroup.freeze", "1") {
        Ok(()) if settle(cgroup, "frozen", true) => "every action denied; processes frozen".into(),
        Ok(()) => format!(
            "every action denied; freezing requested, not complete after {SETTLE:?} (a process \
             in an uninterruptible wait freezes when it returns)"
        ),
        Err(e) => format!("every action denied; freezing failed: {e:#}"),
    }
}

/// Kills the cgroup's processes (and those of every cgroup below it); what happened.
fn kill(cgroup: &Path) -> String {
    match write_control(cgroup, "cgroup.kill", "1") {
        Ok(()) if settle(cgroup, "populated", false) => {
            "every action denied; processes killed".into()
        }
        Ok(()) => {
            format!("every action denied; processes killed, some still exiting after {SETTLE:?}")
        }
        Err(e) if !cgroup.join("cgroup.kill").exists() => format!(
            "every action denied; this kernel has no cgroup.kill (Linux 5.14 and later): \
             processes not killed ({e:#})"
        ),
        Err(e) => format!("every action denied; killing failed: {e:#}"),
    }
}

/// Whether a cgroup with id `id` (its directory's inode number) is below `dir`, at most
/// `MAX_CGROUP_DEPTH` levels down.
fn has_descendant(dir: &Path, id: u64, depth: usize) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if depth > oxd_common::MAX_CGROUP_DEPTH as usize {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry.file_type().is_ok_and(|t| t.is_dir())
            && (entry.metadata().is_ok_and(|m| m.ino() == id)
                || has_descendant(&entry.path(), id, depth + 1))
    })
}

/// Thaws a cgroup the switch froze; what happened.
pub(super) fn thaw(cgroup: &Path) -> String {
    match write_control(cgroup, "cgroup.freeze", "0") {
        Ok(()) => "processes thawed".into(),
        Err(e) => format!("thawing failed: {e:#}"),
    }
}

impl Daemon {
    /// The cgroup id of a target this daemon confines: the one named, or the one it is in
    /// (a cgroup below a target, a process in one).
    pub(super) fn known_target(&self, target: &Target) -> Result<u64> {
        let not_confined =
            || anyhow::anyhow!("that target is not confined by this daemon (see `oxd ctl list`)");
        if let Target::CgroupId(id) = target {
            if self.state.targets.iter().any(|t| t.cgroup_id == *id) {
                return Ok(*id);
            }
            return self
                .state
                .targets
                .iter()
                .find(|t| has_descendant(&t.cgroup, *id, 0))
                .map(|t| t.cgroup_id)
                .ok_or_else(not_confined);
        }
        let known = match target {
            Target::Cgroup(path) => self
                .state
                .targets
                .iter()
                .find(|t| &t.cgroup == path)
                .map(|t| t.cgroup_id),
            _ => None,
        };
        if let Some(id) = known {
            return Ok(id);
        }
        let (path, id) = super::ops::resolve_target(target)?;
        if self.state.targets.iter().any(|t| t.cgroup_id == id) {
            return Ok(id);
        }
        self.state
            .targets
            .iter()
            .find(|t| path.starts_with(&t.cgroup))
            .map(|t| t.cgroup_id)
            .ok_or_else(not_confined)
    }

    /// Writes a `kill-switch` record for the target at `pos`.
    fn switch_record(&self, action: &'static str, pos: usize, outcome: String) -> Result<()> {
        let t = &self.state.targets[pos];
        let g = self.state.current_gen(&t.policy);
        let record = SwitchRecord::new(
            action,
            &t.cgroup,
            t.cgroup_id,
            (
                &t.policy,
                g.map_or("", |g| g.sha256.as_str()),
                g.map_or(0, |g| g.generation),
            ),
            outcome,
        );
        self.note(Note::Switch(record))
    }

    /// Has the pump write one of the daemon's own records (see [`crate::pump::Notes`]).
    pub(super) fn note(&self, note: Note) -> Result<()> {
        match &self.notes {
            Some(notes) => notes.write(note),
            None => bail!("the event pump is not running"),
        }
    }

    /// The kill switch (see the module documentation).
    pub(super) fn halt(&mut self, target: &Target, how: Halt) -> Result<String> {
        let id = self.known_target(target)?;
        let pos = self.state.target_index(id).context("confined")?;
        let how = stronger(self.state.targets[pos].halted, how);
        // Saved first: a daemon that dies before the map update halts the target when it
        // starts again.
        self.state.targets[pos].halted = Some(how);
        self.save()?;
        self.enforcer
            .set_confined(id, HALTED_SLOT)
            .context("cannot halt the target")?;
        let cgroup = self.state.targets[pos].cgroup.clone();
        let outcome = match how {
            Halt::DenyAll => "every action denied".to_owned(),
            Halt::Freeze => freeze(&cgroup),
            Halt::Kill => kill(&cgroup),
        };
        tracing::warn!(cgroup = %cgroup.display(), how = how.name(), %outcome, "kill switch");
        self.switch_record(how.name(), pos, outcome.clone())
            .context("the target is halted, but the audit log does not say so")?;
        Ok(format!(
            "halted {} (cgroup id {id}): {outcome}; `oxd ctl resume` lifts it",
            cgroup.display()
        ))
    }

    /// Lifts the kill switch: the target's policy decides again, and a frozen target thaws.
    pub(super) fn resume(&mut self, target: &Target) -> Result<String> {
        let id = self.known_target(target)?;
        let pos = self.state.target_index(id).context("confined")?;
        let t = &self.state.targets[pos];
        let Some(how) = t.halted else {
            bail!("{} is not halted", t.cgroup.display());
        };
        let Some(slot) = self.state.current_gen(&t.policy).map(|g| g.slot) else {
            bail!(
                "policy {} of {} is not loaded: the target stays halted (release it, or confine \
                 it again)",
                t.policy,
                t.cgroup.display()
            );
        };
        let cgroup = t.cgroup.clone();
        // The policy first, then the state: a daemon that dies in between halts the target
        // again when it starts (fail closed).
        self.enforcer
            .set_confined(id, slot)
            .context("cannot resume the target")?;
        // A killed target may have been frozen first.
        let outcome = match how {
            Halt::DenyAll => "the policy decides again".to_owned(),
            Halt::Freeze | Halt::Kill => format!("the policy decides again; {}", thaw(&cgroup)),
        };
        self.state.targets[pos].halted = None;
        self.save()?;
        tracing::warn!(cgroup = %cgroup.display(), %outcome, "kill switch lifted");
        self.switch_record("resume", pos, outcome.clone())
            .context("the target is resumed, but the audit log does not say so")?;
        Ok(format!("resumed {}: {outcome}", cgroup.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_never_weakens_an_earlier_one() {
        assert_eq!(stronger(None, Halt::DenyAll), Halt::DenyAll);
        assert_eq!(stronger(Some(Halt::Freeze), Halt::DenyAll), Halt::Freeze);
        assert_eq!(stronger(Some(Halt::Freeze), Halt::Kill), Halt::Kill);
        assert_eq!(stronger(Some(Halt::Kill), Halt::Freeze), Halt::Kill);
    }

    #[test]
    fn cgroup_events_are_read_by_key() {
        let dir = std::env::temp_dir().join(format!("oxd-switch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(cgroup_event(&dir, "populated"), Some(true));
        assert_eq!(cgroup_event(&dir, "frozen"), Some(false));
        assert_eq!(cgroup_event(&dir, "other"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
