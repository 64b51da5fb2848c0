//! The control requests: confine, release, replace, list and status, and the generation
//! bookkeeping they share (loading a policy into a free slot, retiring a generation).
//!
//! Each handler saves the state before the kernel change it describes where that can be undone
//! by [`super::reconcile`] (a new generation before its slot is written, a new target before it
//! is confined), and after the change where the kernel change is the commitment (repointing
//! targets, releasing them).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{
    state::{GenState, TargetState},
    Daemon,
};
use crate::{
    cgroup::pids,
    compile::{compile, file_identity},
    control::{
        BudgetInfo, ConnectionInfo, Halt, PolicyInfo, PolicySource, Request, Response, Shown,
        Status, Target, TargetInfo,
    },
    enforcer::{self, BudgetCounter},
    host::cgroup2_mount,
    policy::Policy,
};

/// The cgroup v2 directory named in a `/proc/PID/cgroup` file's text (its `0::` line).
fn cgroup_dir_in(mount: &Path, proc_cgroup: &str) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// [`oxd_common::MAX_CGROUP_DEPTH`]: the kernel side walks a task's ancestors at levels
/// 1 to `MAX_CGROUP_DEPTH - 1` looking for a confined one.
const MAX_CGROUP_DEPTH_USIZE: usize = oxd_common::MAX_CGROUP_DEPTH as usize;

/// How many levels below the cgroup2 mount `path` is (the kernel's cgroup `level`).
fn cgroup_level(mount: &Path, path: &Path) -> usize {
    path.strip_prefix(mount)
        .map_or(0, |rel| rel.components().count())
}

/// A cgroup v2 directory and its id.
pub(super) fn resolve_target(target: &Target) -> Result<(PathBuf, u64)> {
    let mount = cgroup2_mount()?;
    let path = match target {
        Target::Cgroup(path) => path.clone(),
        Target::CgroupId(id) => {
            bail!("name a cgroup directory or a process, not cgroup id {id}, to confine")
        }
        Target::Pid(pid) => {
            let file = format!("/proc/{pid}/cgroup");
            let text = fs::read_to_string(&file)
                .with_context(|| format!("cannot read {file}: is process {pid} running?"))?;
            cgroup_dir_in(&mount, &text)
                .ok_or_else(|| anyhow!("process {pid} is in no cgroup v2 ({file})"))?
        }
    };
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot find cgroup {}", path.display()))?;
    if !path.starts_with(&mount) || !path.join("cgroup.procs").exists() {
        bail!(
            "{} is not a cgroup v2 directory (under {})",
            path.display(),
            mount.display()
        );
    }
    if path == mount {
        bail!("refusing to confine the root cgroup: that would confine every process");
    }
    let level = cgroup_level(&mount, &path);
    if level >= MAX_CGROUP_DEPTH_USIZE {
        bail!(
            "refusing to confine {}: it is {level} levels below the cgroup root, and the kernel \
             side recognises confined cgroups only down to level {} (a deeper one would not \
             confine the cgroups its agent creates)",
            path.display(),
            MAX_CGROUP_DEPTH_USIZE - 1
        );
    }
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Some(own) = cgroup_dir_in(&mount, &own) {
        if own.starts_with(&path) {
            bail!(
                "refusing to confine {}: the oxd daemon itself runs in it (or below it)",
                path.display()
            );
        }
    }
    let id = fs::metadata(&path)
        .with_context(|| format!("cannot read cgroup {}", path.display()))?
        .ino();
    Ok((path, id))
}

/// The highest cgroup above `path` (below the cgroup2 `mount`) whose `cgroup.procs` a user
/// other than root may write (owned by that user, or writable by group or others): the root of
/// a tree delegated to that user (systemd's `Delegate=`, `user@UID.service`), and that user's
/// id. Within such a tree, the kernel's own permission checks let the user move a process from
/// the confined cgroup to any other cgroup of the tree.
fn delegation_root(mount: &Path, path: &Path) -> Option<(PathBuf, u32)> {
    let mut found = None;
    let mut dir = path.parent();
    while let Some(d) = dir {
        if !d.starts_with(mount) {
            break;
        }
        if let Ok(meta) = fs::metadata(d.join("cgroup.procs")) {
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                found = Some((d.to_owned(), meta.uid()));
            }
        }
        dir = d.parent();
    }
    found
}

/// Milliseconds, for the log.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn parse(source: &PolicySource) -> Result<Policy> {
    Ok(Policy::parse(&source.path, &source.text)?)
}

impl Daemon {
    /// Answers one control request.
    pub(super) fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Confine { target, policy } => self.confine(&target, &policy),
            Request::Release { target, all } => self.release(target.as_ref(), all),
            Request::Replace { policy } => self.replace(&policy),
            Request::Halt { target, how } => self.halt(&target, how),
            Request::Resume { target } => self.resume(&target),
            Request::Grant {
                target,
                connect,
                protocol,
                uses,
                expires_in_ms,
            } => {
                return match self.grant(&target, connect, protocol, uses, expires_in_ms) {
                    Ok((message, grant)) => Response::granted(message, grant),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Revoke { id } => self.revoke(id),
            // The socket serves subscriptions itself; one never reaches here.
            Request::Subscribe { .. } => Err(anyhow!("a subscription cannot be answered here")),
            Request::List => return Response::targets(self.targets()),
            Request::Show { target } => {
                return match self.show(&target) {
                    Ok(shown) => Response {
                        shown: Some(shown),
                        message: None,
                        ..Response::done("")
                    },
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Status => {
                return self
                    .status()
                    .map_or_else(|e| Response::error(format!("{e:#}")), Response::status)
            }
        };
        match result {
            Ok(message) => Response::done(message),
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    /// Loads `policy` into a free slot as a new generation. The event pump can name its
    /// decisions before anything points at the slot.
    fn load_generation(&mut self, policy: Policy, path: PathBuf, text: String) -> Result<u64> {
        if policy.needs_lsm() && !self.lsm {
            bail!(
                "policy {} has exec or file rules, and this kernel does not run BPF-LSM. {}",
                policy.name,
                enforcer::LSM_FIX
            );
        }
        let slot = self.state.free_slot()?;
        let generation = self.state.generation + 1;
        self.state.generation = generation;
        self.state.generations.push(GenState {
            generation,
            slot,
            name: policy.name.clone(),
            sha256: policy.sha256.clone(),
            path,
            text,
        });
        // Saved first: a crash while the slot is written is undone at the next start.
        self.save()?;
        let policy = Arc::new(policy);
        self.book().insert(generation, Arc::clone(&policy));
        let written = compile(&policy, slot, generation, &file_identity)
            .map_err(enforcer::EnforcerError::from)
            .and_then(|image| self.enforcer.write_slot(&image));
        if let Err(e) = written {
            self.book().remove(generation);
            self.enforcer.clear_slot(slot)?;
            self.state
                .generations
                .retain(|g| g.generation != generation);
            self.save()?;
            return Err(e).context(format!("cannot load policy {}", policy.name));
        }
        Ok(generation)
    }

    /// Clears the slot of a generation nothing points at any more, once every BPF program
    /// that could still be reading it has finished. Its decisions still in the ring buffer are
    /// named by its policy (the book keeps retired generations). The caller saves the state.
    fn retire(&mut self, generation: u64) -> Result<()> {
        self.barrier
            .wait()
            .context("cannot wait for running BPF programs")?;
        if let Some(g) = self.state.gen(generation) {
            let slot = g.slot;
            self.enforcer.clear_slot(slot)?;
        }
        self.state
            .generations
            .retain(|g| g.generation != generation);
        self.book().retire(generation);
        Ok(())
    }

    fn confine(&mut self, target: &Target, source: &PolicySource) -> Result<String> {
        let (cgroup, cgroup_id) = resolve_target(target)?;
        let delegated = delegation_root(&cgroup2_mount()?, &cgroup);
        let note = match &delegated {
            // Without BPF-LSM there is no guard to deny the move out of the confined cgroup.
            Some((root, uid)) if !self.lsm => bail!(
                "refusing to confine {}: the cgroup tree {} is delegated to uid {uid}, who could \
                 move the agent out of the confined cgroup into another cgroup of that tree, and \
                 without BPF-LSM oxd cannot deny that move; confine {} instead (the whole \
                 delegated tree), or run the agent in a cgroup outside the delegation",
                cgroup.display(),
                root.display(),
                root.display()
            ),
            Some((root, uid)) => format!(
                "; note: {} is delegated to uid {uid}: the guard denies the agent moves out of \
                 the confined cgroup",
                root.display()
            ),
            None => String::new(),
        };
        if let Some(t) = self.state.targets.iter().find(|t| t.cgroup_id == cgroup_id) {
            bail!(
                "{} is already confined under policy {}: use `oxd ctl replace` to change the \
                 policy, or release it first",
                cgroup.display(),
                t.policy
            );
        }
        let policy = parse(source)?;
        let name = policy.name.clone();
        let max_processes = policy.max_processes;
        if max_processes.is_some() {
            pids::max(&cgroup)?;
        }
        let dir = fs::File::open(&cgroup)
            .with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
        let generation = match self.state.current_gen(&name) {
            Some(g) if g.sha256 == policy.sha256 => g.generation,
            Some(g) => bail!(
                "a different policy named {name} is loaded (generation {}, sha256 {}): replace it \
                 with `oxd ctl replace --policy {}`, or give this one another name",
                g.generation,
                &g.sha256[..16],
                source.path.display()
            ),
            None => {
                let g = self.load_generation(policy, source.path.clone(), source.text.clone())?;
                self.state.current.insert(name.clone(), g);
                g
            }
        };
        let g = self.state.gen(generation).expect("loaded").clone();
        let label = cgroup.display().to_string();
        self.state.targets.push(TargetState {
            cgroup: cgroup.clone(),
            cgroup_id,
            policy: name.clone(),
            halted: None,
            pids_max_before: None,
            refused_reported: 0,
        });
        self.save()?;
        let pos = self.state.targets.len() - 1;
        if let Err(e) = self.apply_limit(pos, max_processes) {
            self.state.targets.pop();
            self.drop_unused(&name)?;
            self.save()?;
            return Err(e).context(format!("cannot confine {}", cgroup.display()));
        }
        // The cgroup programs decide nothing for a cgroup that is not in CONFINED yet; the
        // map update below makes exec, file and network enforcement start together.
        let attached = self
            .enforcer
            .attach_network(&dir, cgroup_id, &label)
            .and_then(|()| self.enforcer.set_confined(cgroup_id, g.slot));
        if let Err(e) = attached {
            let _ = self.apply_limit(pos, None);
            let _ = self.enforcer.remove_confined(cgroup_id);
            let _ = self.enforcer.detach_network(cgroup_id);
            self.state.targets.retain(|t| t.cgroup_id != cgroup_id);
            self.drop_unused(&name)?;
            self.save()?;
            return Err(e).context(format!("cannot confine {}", cgroup.display()));
        }
        self.metrics
            .set_policy(&label, &g.name, &g.sha256, g.generation);
        // The policy file, out of its agents' reach (as the daemon sees the path).
        self.enforcer.protect_files(&[(&source.path, false)])?;
        tracing::info!(cgroup = %label, cgroup_id, policy = %name, generation, "confined");
        Ok(format!(
            "confined {} (cgroup id {cgroup_id}) under policy {name} generation {generation}{note}",
            cgroup.display()
        ))
    }

    /// Unloads a policy that no target uses any more.
    fn drop_unused(&mut self, name: &str) -> Result<()> {
        if self.state.targets.iter().any(|t| t.policy == name) {
            return Ok(());
        }
        if let Some(generation) = self.state.current.remove(name) {
            self.retire(generation)?;
        }
        Ok(())
    }

    pub(super) fn release(&mut self, target: Option<&Target>, all: bool) -> Result<String> {
        let ids: Vec<u64> = if all {
            self.state.targets.iter().map(|t| t.cgroup_id).collect()
        } else {
            let target = target.ok_or_else(|| anyhow!("name a target, or --all"))?;
            vec![self.known_target(target)?]
        };
        let mut released = Vec::new();
        for id in ids {
            if let Some(cgroup) = self.release_one(id)? {
                tracing::info!(cgroup = %cgroup.display(), "released");
                released.push(cgroup.display().to_string());
            }
        }
        self.save()?;
        Ok(if released.is_empty() {
            "nothing to release".to_owned()
        } else {
            format!("released {}", released.join(", "))
        })
    }

    /// Lifts enforcement for one cgroup (one map update; the links go after) and forgets it.
    /// The caller saves the state.
    fn release_one(&mut self, cgroup_id: u64) -> Result<Option<PathBuf>> {
        self.enforcer.remove_confined(cgroup_id)?;
        self.enforcer.detach_network(cgroup_id)?;
        if let Err(e) = self.enforcer.forget_budgets(cgroup_id, &[]) {
            tracing::warn!("released without forgetting its budget counters: {e:#}");
        }
        if let Err(e) = self.enforcer.remove_grants(|k, _| k.target != cgroup_id) {
            tracing::warn!("released without withdrawing its grants: {e:#}");
        }
        let Some(pos) = self
            .state
            .targets
            .iter()
            .position(|t| t.cgroup_id == cgroup_id)
        else {
            return Ok(None);
        };
        if let Err(e) = self.apply_limit(pos, None) {
            tracing::info!("released without restoring pids.max: {e:#}");
        }
        let t = self.state.targets.remove(pos);
        // What the kill switch froze would stay frozen.
        if matches!(t.halted, Some(Halt::Freeze | Halt::Kill)) {
            let thawed = super::switch::thaw(&t.cgroup);
            tracing::info!(cgroup = %t.cgroup.display(), "released while halted: {thawed}");
        }
        self.drop_unused(&t.policy)?;
        self.metrics.clear_policy(&t.cgroup.display().to_string());
        Ok(Some(t.cgroup))
    }

    /// Forgets targets whose cgroup was removed: nothing can run in them any more, and their
    /// ids must not linger in the kernel's map.
    pub(super) fn prune_removed(&mut self) -> Result<()> {
        let gone: Vec<u64> = self
            .state
            .targets
            .iter()
            .filter(|t| fs::metadata(&t.cgroup).map(|m| m.ino()).ok() != Some(t.cgroup_id))
            .map(|t| t.cgroup_id)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for id in gone {
            if let Some(cgroup) = self.release_one(id)? {
                tracing::info!(cgroup = %cgroup.display(), "cgroup removed: no longer confined");
            }
        }
        self.save()
    }

    pub(super) fn has_replaced(&self) -> bool {
        !self.replaced.is_empty()
    }

    /// Retires the generations replacements superseded (see [`Daemon::replaced`]).
    pub(super) fn retire_replaced(&mut self) -> Result<()> {
        if self.replaced.is_empty() {
            return Ok(());
        }
        for generation in std::mem::take(&mut self.replaced) {
            self.retire(generation)?;
        }
        self.save()
    }

    /// Reads, checks and compiles the policy, writes its generation into a free slot, points
    /// every target under the policy's name at it (one map update each: the switch), and saves
    /// the state. The old generation is retired after the answer ([`Daemon::replaced`]). How
    /// long each step took is logged (`OXD_LOG=info`).
    fn replace(&mut self, source: &PolicySource) -> Result<String> {
        let started = std::time::Instant::now();
        let policy = parse(source)?;
        let parsed = std::time::Instant::now();
        let name = policy.name.clone();
        let old = self.state.current_gen(&name).cloned().ok_or_else(|| {
            anyhow!(
                "no policy named {name} is loaded: confine a target with it first (`oxd ctl \
                 confine --policy {}`)",
                source.path.display()
            )
        })?;
        if old.sha256 == policy.sha256 {
            return Ok(format!(
                "policy {name} is unchanged (generation {})",
                old.generation
            ));
        }
        // A limit needs the pids controller on every target: checked before anything changes.
        let max_processes = policy.max_processes;
        if max_processes.is_some() {
            for t in self.state.targets.iter().filter(|t| t.policy == name) {
                pids::max(&t.cgroup)?;
            }
        }
        let budgets = crate::compile::budget_ids(&policy);
        let generation = self.load_generation(policy, source.path.clone(), source.text.clone())?;
        let loaded = std::time::Instant::now();
        let g = self.state.gen(generation).expect("loaded").clone();
        let targets: Vec<TargetState> = self
            .state
            .targets
            .iter()
            .filter(|t| t.policy == name)
            .cloned()
            .collect();
        // Each target switches in one map update; a halted one stays halted (it takes the new
        // generation when resumed).
        for t in &targets {
            if t.halted.is_none() {
                self.enforcer.set_confined(t.cgroup_id, g.slot)?;
            }
            self.metrics.set_policy(
                &t.cgroup.display().to_string(),
                &g.name,
                &g.sha256,
                generation,
            );
        }
        self.state.current.insert(name.clone(), generation);
        // A rule unchanged keeps its budget's counter; the others' counters go.
        for t in &targets {
            if let Err(e) = self.enforcer.forget_budgets(t.cgroup_id, &budgets) {
                tracing::warn!("cannot forget the old policy's budget counters: {e:#}");
            }
        }
        for pos in 0..self.state.targets.len() {
            if self.state.targets[pos].policy == name {
                if let Err(e) = self.apply_limit(pos, max_processes) {
                    tracing::warn!("the new max_processes is not in force: {e:#}");
                }
            }
        }
        // In force from here; the old generation is retired after the answer (a daemon that
        // dies first leaves it to the next one's reconciliation, which retires it).
        let switched = std::time::Instant::now();
        self.save()?;
        self.replaced.push(old.generation);
        tracing::info!(
            policy = %name,
            from = old.generation,
            to = generation,
            parse_ms = ms(parsed.duration_since(started)),
            load_ms = ms(loaded.duration_since(parsed)),
            switch_ms = ms(switched.duration_since(loaded)),
            save_ms = ms(switched.elapsed()),
            "replaced"
        );
        Ok(format!(
            "replaced policy {name}: generation {} -> {generation} for {} targets",
            old.generation,
            targets.len()
        ))
    }

    fn targets(&self) -> Vec<TargetInfo> {
        self.state
            .targets
            .iter()
            .map(|t| {
                let g = self.state.current_gen(&t.policy);
                let (budgets, connections) = g
                    .map(|g| self.counted(t.cgroup_id, g.generation))
                    .unwrap_or_default();
                TargetInfo {
                    cgroup: t.cgroup.clone(),
                    cgroup_id: t.cgroup_id,
                    policy: t.policy.clone(),
                    sha256: g.map(|g| g.sha256.clone()).unwrap_or_default(),
                    generation: g.map_or(0, |g| g.generation),
                    halted: t.halted,
                    budgets,
                    connections,
                    grants: self.grants_of(t.cgroup_id),
                }
            })
            .collect()
    }

    /// The policy target `target` is under now, with the target's entry of `list`.
    fn show(&self, target: &Target) -> Result<Shown> {
        let id = self.known_target(target)?;
        let info = self
            .targets()
            .into_iter()
            .find(|t| t.cgroup_id == id)
            .context("the target was released")?;
        let state = self
            .state
            .targets
            .iter()
            .find(|t| t.cgroup_id == id)
            .and_then(|t| self.state.current_gen(&t.policy))
            .context("the target's policy is not loaded")?;
        Ok(Shown {
            path: state.path.clone(),
            text: state.text.clone(),
            target: info,
        })
    }

    /// The budgets and connection limits of generation `generation`'s policy, as counted for
    /// target `cgroup_id`.
    fn counted(&self, cgroup_id: u64, generation: u64) -> (Vec<BudgetInfo>, Vec<ConnectionInfo>) {
        let Some(policy) = self.book().get(generation) else {
            return (Vec::new(), Vec::new());
        };
        let counters = match self.enforcer.budget_counters(cgroup_id) {
            Ok(counters) => counters,
            Err(e) => {
                tracing::warn!("cannot read budget counters: {e:#}");
                Vec::new()
            }
        };
        let rule_id = |rule: u32| {
            policy
                .rule(rule)
                .map_or_else(|| format!("rule {rule}"), |r| r.id.clone())
        };
        let now_ms = super::grants::boot_ns() / 1_000_000;
        let budgets = crate::compile::budgets_by_rule(&policy)
            .into_iter()
            .map(|(rule, id, budget)| {
                let running = counters
                    .iter()
                    .find(|(known, _)| *known == id)
                    .map(|(_, raw)| BudgetCounter::from_raw(*raw))
                    .filter(|c| now_ms.saturating_sub(c.start_ms) < u64::from(budget.per_ms));
                BudgetInfo {
                    rule: rule_id(rule),
                    count: budget.count,
                    per: budget.per_text(),
                    used: running.map_or(0, |c| c.used),
                    refills_in_ms: running
                        .map(|c| (c.start_ms + u64::from(budget.per_ms)).saturating_sub(now_ms)),
                }
            })
            .collect();
        let connections = crate::compile::connection_limits_by_rule(&policy)
            .into_iter()
            .map(|(rule, id, max)| ConnectionInfo {
                rule: rule_id(rule),
                max,
                open: counters
                    .iter()
                    .find(|(known, _)| *known == id)
                    .map_or(0, |(_, open)| u32::try_from(*open).unwrap_or(u32::MAX)),
            })
            .collect();
        (budgets, connections)
    }

    fn status(&self) -> Result<Status> {
        Ok(Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            adopted: self.adopted,
            lsm: self.lsm,
            bpffs: self.pin_dir.clone(),
            audit_log: self.args.audit_log.clone(),
            targets: self.state.targets.len(),
            generation: self.state.generation,
            policies: self
                .state
                .current
                .iter()
                .filter_map(|(name, generation)| {
                    let g = self.state.gen(*generation)?;
                    Some(PolicyInfo {
                        name: name.clone(),
                        sha256: g.sha256.clone(),
                        generation: *generation,
                        slot: g.slot,
                        targets: self
                            .state
                            .targets
                            .iter()
                            .filter(|t| &t.policy == name)
                            .count(),
                    })
                })
                .collect(),
            records: self.stats.records(),
            denied: self.enforcer.denied_events()?,
            ringbuf_lost: self.enforcer.lost_events()?,
            submitted: self.enforcer.submitted_events()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_levels_count_from_the_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(cgroup_level(mount, Path::new("/sys/fs/cgroup/a")), 1);
        assert_eq!(cgroup_level(mount, Path::new("/sys/fs/cgroup/a/b/c")), 3);
        let deep: PathBuf = std::iter::once("/sys/fs/cgroup".to_string())
            .chain((0..MAX_CGROUP_DEPTH_USIZE).map(|i| format!("l{i}")))
            .collect();
        assert_eq!(cgroup_level(mount, &deep), MAX_CGROUP_DEPTH_USIZE);
    }

    #[test]
    fn cgroup_dir_is_read_from_the_unified_line() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            cgroup_dir_in(mount, "1:name=systemd:/x\n0::/agents/a1\n"),
            Some(PathBuf::from("/sys/fs/cgroup/agents/a1"))
        );
        assert_eq!(cgroup_dir_in(mount, "0::/\n"), Some(mount.to_owned()));
        assert_eq!(cgroup_dir_in(mount, "1:cpu:/x\n"), None);
    }
}
