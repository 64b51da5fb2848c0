//! `[process] max_processes` on the daemon's targets: the target cgroup's `pids.max`, set
//! when it is confined or its policy replaced, restored to what it was when the policy drops
//! the limit or the target is released; and a `limit` record, twice a second, for the forks it
//! refused since the last one.

use anyhow::{Context as _, Result};

use super::Daemon;
use crate::{
    audit::{LimitRecord, Note},
    cgroup::pids,
};

impl Daemon {
    /// Gives the target at `pos` the process limit `max` (its `pids.max`; the value it had is
    /// kept to restore), or restores it when `max` is `None`. The caller saves the state.
    pub(super) fn apply_limit(&mut self, pos: usize, max: Option<u32>) -> Result<()> {
        let t = &mut self.state.targets[pos];
        match max {
            Some(max) => {
                if t.pids_max_before.is_none() {
                    t.pids_max_before = Some(pids::max(&t.cgroup)?);
                    t.refused_reported = pids::refused(&t.cgroup);
                }
                pids::set_max(&t.cgroup, &max.to_string())?;
            }
            None => {
                if let Some(before) = t.pids_max_before.take() {
                    pids::set_max(&t.cgroup, &before)?;
                }
            }
        }
        Ok(())
    }

    /// Writes a `limit` record for each limited target whose limit refused forks since its
    /// last one, and saves the counts reported.
    pub(super) fn report_limits(&mut self) -> Result<()> {
        let mut changed = false;
        for pos in 0..self.state.targets.len() {
            let t = &self.state.targets[pos];
            if t.pids_max_before.is_none() {
                continue;
            }
            let Some(g) = self.state.current_gen(&t.policy) else {
                continue;
            };
            let Some(max) = self.book().get(g.generation).and_then(|p| p.max_processes) else {
                continue;
            };
            let refused = pids::refused(&t.cgroup);
            if refused <= t.refused_reported {
                continue;
            }
            let record = LimitRecord::new(
                &t.cgroup,
                t.cgroup_id,
                (&g.name, &g.sha256, g.generation),
                max,
                refused - t.refused_reported,
            );
            self.note(Note::Limit(record))
                .context("cannot record the forks max_processes refused")?;
            self.state.targets[pos].refused_reported = refused;
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }
}
