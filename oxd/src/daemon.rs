//! `oxd daemon`: a long-running service that confines cgroups under named policies, replaces
//! policies without a gap, and keeps enforcing when it dies.
//!
//! - **Slots and generations.** Every policy the daemon loads gets a new generation number and
//!   one of the kernel's policy slots. A confined cgroup points at its policy's slot (the
//!   `CONFINED` map). Replacing a policy writes the new generation into a free slot, then
//!   repoints each target in one map update: a decision reads the slot once, so it is made by
//!   the old generation or the new one, never a mix, never none. The old slot is cleared once
//!   every program that could still be reading it has finished ([`RcuBarrier`]).
//! - **Pins.** Maps and links live in bpffs under `--bpffs/v<layout>/`. If the daemon is
//!   killed, the links keep the programs attached and the maps keep the policies: confined
//!   processes stay confined. A restarted daemon reopens the pinned maps, finishes any change
//!   that was interrupted (from its state file), and goes on reading the ring buffer, which
//!   kept the decisions made meanwhile (or counted those it had no room for).
//! - **State.** `--state-dir/state.json` holds the loaded generations (with their policy text),
//!   the targets, and the count of lost decisions already reported. It is written (atomically)
//!   before each kernel change, so a crash at any point can be completed forward or undone.
//! - **Exit.** SIGTERM or SIGINT: `--on-exit keep` (default) leaves enforcement pinned;
//!   `--on-exit release` releases every target and removes the pins.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use oxd_common::{MAP_LAYOUT_VERSION, MAX_POLICY_SLOTS};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{unix::AsyncFd, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

use crate::{
    audit::{decode_event, AuditLog, Clock, Record, RecordFilter, Rotation},
    cgroup::cgroup2_mount,
    control::{PolicyInfo, Request, Response, Status, Target, TargetInfo, DEFAULT_SOCKET},
    enforcer::{self, Enforcer, LoadOptions},
    metrics::Metrics,
    policy::Policy,
    rcu::RcuBarrier,
};

/// Retired generations remembered for naming late decisions in the audit log.
const REMEMBERED_GENERATIONS: usize = 256;

const STATE_VERSION: u32 = 1;

/// What SIGTERM does to enforcement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave every target confined (pinned); a restarted daemon adopts them.
    #[default]
    Keep,
    /// Release every target and remove the pins.
    Release,
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Control socket (created mode 0600; only peers with the daemon's uid are answered).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for the daemon's state file.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/oxd")]
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/oxd")]
    pub bpffs: PathBuf,
    /// Audit log (JSON lines, hash-chained; appended to, chain continued).
    #[arg(long, value_name = "PATH", default_value = "/var/log/oxd/audit.jsonl")]
    pub audit_log: PathBuf,
    /// Rotate the audit log when it would grow past this many bytes (FILE -> FILE.1 -> ...).
    #[arg(long, value_name = "BYTES")]
    pub audit_max_bytes: Option<u64>,
    /// How many rotated parts to keep.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub audit_keep: u32,
    /// Which decisions to record.
    #[arg(long, value_enum, default_value_t = RecordFilter::All)]
    pub record: RecordFilter,
    /// Serve Prometheus metrics (OpenMetrics text) on this address, at /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// What SIGTERM/SIGINT does to enforcement.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    pub on_exit: OnExit,
}

/// One generation occupying a slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GenState {
    generation: u64,
    slot: u32,
    name: String,
    sha256: String,
    path: PathBuf,
    text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TargetState {
    cgroup: PathBuf,
    cgroup_id: u64,
    policy: String,
}

/// The daemon's persistent state (`state.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    /// The newest generation handed out.
    generation: u64,
    /// Lost decisions already reported in the audit log (of the pinned counters).
    reported_lost: u64,
    /// Every generation occupying a slot (current ones, and one being replaced).
    generations: Vec<GenState>,
    /// Policy name -> its current generation.
    current: BTreeMap<String, u64>,
    targets: Vec<TargetState>,
}

impl State {
    fn gen(&self, generation: u64) -> Option<&GenState> {
        self.generations.iter().find(|g| g.generation == generation)
    }

    fn current_gen(&self, name: &str) -> Option<&GenState> {
        self.current.get(name).and_then(|g| self.gen(*g))
    }
}

struct Daemon {
    /// Held for the daemon's life: one daemon per state directory, and per pin directory.
    _lock: nix::fcntl::Flock<fs::File>,
    _pin_lock: nix::fcntl::Flock<fs::File>,
    args: DaemonArgs,
    pin_dir: PathBuf,
    state_path: PathBuf,
    enforcer: Enforcer,
    state: State,
    /// Parsed policies by generation: every generation in a slot, and recently cleared ones.
    policies: HashMap<u64, Arc<Policy>>,
    forgotten: VecDeque<u64>,
    barrier: RcuBarrier,
    lsm: bool,
    adopted: bool,
    audit: AuditLog,
    clock: Clock,
    metrics: Metrics,
    records: u64,
}

/// The cgroup v2 directory named in a `/proc/PID/cgroup` file's text (its `0::` line).
fn cgroup_dir_in(mount: &Path, proc_cgroup: &str) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// A cgroup v2 directory and its id.
fn resolve_target(target: &Target) -> Result<(PathBuf, u64)> {
    let mount = cgroup2_mount()?;
    let path = match target {
        Target::Cgroup(path) => path.clone(),
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

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Pins need a bpf filesystem: checks the nearest existing directory of `dir`.
fn check_bpffs(dir: &Path) -> Result<()> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let stat = nix::sys::statfs::statfs(probe)
        .with_context(|| format!("cannot inspect the file system of {}", probe.display()))?;
    if stat.filesystem_type().0 as u64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf file system, so enforcement cannot be pinned: mount one (`mount -t bpf bpf /sys/fs/bpf`) or give --bpffs a directory inside one",
            dir.display()
        );
    }
    Ok(())
}

impl Daemon {
    fn start(args: DaemonArgs) -> Result<Self> {
        check_bpffs(&args.bpffs)?;
        let pin_dir = args.bpffs.join(format!("v{MAP_LAYOUT_VERSION}"));
        fs::create_dir_all(&args.state_dir)
            .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
        let lock_path = args.state_dir.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| {
                anyhow!(
                    "another oxd daemon is running with state directory {} ({})",
                    args.state_dir.display(),
                    errno.desc()
                )
            })?;
        let state_path = args.state_dir.join("state.json");
        let adopted = pin_dir.join("maps").join("CONFIG").exists();
        // One daemon per pin directory too (a second one would clear slots it does not know).
        fs::create_dir_all(&pin_dir)
            .with_context(|| format!("cannot create {}", pin_dir.display()))?;
        let pin_dir_file = fs::File::open(&pin_dir)
            .with_context(|| format!("cannot open {}", pin_dir.display()))?;
        let pin_lock =
            nix::fcntl::Flock::lock(pin_dir_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, errno)| {
                    anyhow!(
                        "another oxd daemon uses the pins under {} ({})",
                        pin_dir.display(),
                        errno.desc()
                    )
                })?;
        let mut state: State = match fs::read(&state_path) {
            Ok(bytes) if adopted => serde_json::from_slice(&bytes)
                .with_context(|| format!("cannot parse {}", state_path.display()))?,
            Ok(_) => {
                tracing::warn!(
                    "no pinned maps under {}: starting afresh, ignoring {}",
                    pin_dir.display(),
                    state_path.display()
                );
                State::default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).context(format!("cannot read {}", state_path.display())),
        };
        if adopted && !state_path.exists() {
            bail!(
                "enforcement is pinned under {} but there is no state file {}, so this daemon \
                 cannot know what it enforces. Give the --state-dir of the daemon that pinned \
                 it, or lift that enforcement by removing the pins (`rm -r {}`: confined \
                 processes are then unconfined) and start again",
                pin_dir.display(),
                state_path.display(),
                pin_dir.display()
            );
        }
        state.version = STATE_VERSION;
        let lsm = enforcer::bpf_lsm_active();
        if !lsm {
            tracing::warn!(
                "BPF-LSM is not active: only network rules can be enforced. {}",
                enforcer::LSM_FIX
            );
        }
        let mut enforcer = Enforcer::open(&LoadOptions {
            lsm,
            pin_dir: Some(pin_dir.clone()),
        })?;
        if lsm {
            enforcer.attach_lsm()?;
        }
        if let Some(parent) = args.audit_log.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let rotation = args
            .audit_max_bytes
            .map(|max| Rotation::new(max, args.audit_keep));
        let audit = AuditLog::append(&args.audit_log, args.record, rotation)?;
        let mut daemon = Self {
            _lock: lock,
            _pin_lock: pin_lock,
            args,
            pin_dir,
            state_path,
            enforcer,
            state,
            policies: HashMap::new(),
            forgotten: VecDeque::new(),
            barrier: RcuBarrier::new().context(
                "cannot create the map-in-map oxd uses to wait for running BPF programs",
            )?,
            lsm,
            adopted,
            audit,
            clock: Clock::new(),
            metrics: Metrics::new(),
            records: 0,
        };
        if !adopted {
            daemon.state.reported_lost = 0;
        }
        daemon.reconcile()?;
        daemon.save()?;
        Ok(daemon)
    }

    /// Brings the kernel and the state file into agreement after a restart: completes or
    /// undoes whatever a crash interrupted.
    fn reconcile(&mut self) -> Result<()> {
        let in_kernel: HashMap<u32, u64> = self.enforcer.slot_generations()?.into_iter().collect();
        // Generations whose slot was never completely written are undone.
        let (complete, partial): (Vec<GenState>, Vec<GenState>) = self
            .state
            .generations
            .drain(..)
            .partition(|g| in_kernel.get(&g.slot) == Some(&g.generation));
        self.state.generations = complete;
        for g in partial {
            tracing::warn!(
                generation = g.generation,
                "policy {} was not completely loaded before the daemon stopped: undone",
                g.name
            );
            self.enforcer.clear_slot(g.slot)?;
        }
        // Slots the state does not know (cannot normally happen: the state is written first).
        for (slot, generation) in &in_kernel {
            if self.state.gen(*generation).is_none() {
                tracing::warn!(
                    slot,
                    generation,
                    "clearing a policy slot unknown to the state"
                );
                self.enforcer.clear_slot(*slot)?;
            }
        }
        // A policy whose current generation is gone falls back to its newest remaining one.
        let names: Vec<String> = self.state.current.keys().cloned().collect();
        for name in names {
            if self.state.current_gen(&name).is_none() {
                let newest = self
                    .state
                    .generations
                    .iter()
                    .filter(|g| g.name == name)
                    .map(|g| g.generation)
                    .max();
                match newest {
                    Some(g) => {
                        self.state.current.insert(name, g);
                    }
                    None => {
                        self.state.current.remove(&name);
                    }
                }
            }
        }
        for g in self.state.generations.clone() {
            match Policy::parse(&g.path, &g.text) {
                Ok(policy) => {
                    self.policies.insert(g.generation, Arc::new(policy));
                }
                Err(e) => tracing::error!(
                    generation = g.generation,
                    "cannot parse adopted policy {}: {e:#} (it stays enforced; its records \
                     will not name rules)",
                    g.name
                ),
            }
        }
        let stale: Vec<u64> = self
            .state
            .generations
            .iter()
            .filter(|g| self.state.current.get(&g.name) != Some(&g.generation))
            .map(|g| g.generation)
            .collect();
        // Every target points at its policy's current generation (completing a replacement),
        // and has its cgroup programs attached; targets whose cgroup is gone are dropped.
        let confined: HashMap<u64, u32> = self.enforcer.confined()?.into_iter().collect();
        for target in self.state.targets.clone() {
            let slot = self.state.current_gen(&target.policy).map(|g| g.slot);
            let dir = fs::File::open(&target.cgroup);
            let alive = dir.is_ok()
                && fs::metadata(&target.cgroup).map(|m| m.ino()).ok() == Some(target.cgroup_id);
            match (slot, alive) {
                (Some(slot), true) => {
                    let label = target.cgroup.display().to_string();
                    self.enforcer
                        .attach_network(dir.expect("opened"), target.cgroup_id, &label)?;
                    if confined.get(&target.cgroup_id) != Some(&slot) {
                        self.enforcer.set_confined(target.cgroup_id, slot)?;
                    }
                }
                (_, false) => {
                    tracing::warn!(
                        "cgroup {} is gone: no longer confined",
                        target.cgroup.display()
                    );
                    self.enforcer.remove_confined(target.cgroup_id)?;
                    self.enforcer.detach_network(target.cgroup_id)?;
                    self.state
                        .targets
                        .retain(|t| t.cgroup_id != target.cgroup_id);
                }
                (None, true) => {
                    // Its policy is unknown: leave it pointing where it does (an empty slot
                    // fails closed) and say so.
                    tracing::error!(
                        "cgroup {} is confined under policy {} which is not loaded: its actions \
                         are denied until it is released or confined again",
                        target.cgroup.display(),
                        target.policy
                    );
                }
            }
        }
        // Generations replaced (or released) just before the daemon stopped: nothing points at
        // them any more.
        for generation in stale {
            self.retire(generation)?;
        }
        for (cgroup_id, slot) in confined {
            if !self.state.targets.iter().any(|t| t.cgroup_id == cgroup_id) {
                tracing::warn!(
                    cgroup_id,
                    slot,
                    "a confined cgroup is unknown to the state file: it stays confined"
                );
            }
        }
        for target in &self.state.targets {
            if let Some(g) = self.state.current_gen(&target.policy) {
                self.metrics.set_policy(
                    &target.cgroup.display().to_string(),
                    &g.name,
                    &g.sha256,
                    g.generation as i64,
                );
            }
        }
        if self.adopted {
            tracing::info!(
                targets = self.state.targets.len(),
                generations = self.state.generations.len(),
                "adopted pinned enforcement from {}",
                self.pin_dir.display()
            );
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).context("cannot encode the state")?;
        write_atomically(&self.state_path, &bytes)
            .with_context(|| format!("cannot write {}", self.state_path.display()))
    }

    /// Clears the slot of a generation nothing points at any more, once every BPF program
    /// that could still be reading it has finished. The caller saves the state.
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
        self.forgotten.push_back(generation);
        while self.forgotten.len() > REMEMBERED_GENERATIONS {
            if let Some(g) = self.forgotten.pop_front() {
                self.policies.remove(&g);
            }
        }
        Ok(())
    }

    fn free_slot(&self) -> Result<u32> {
        let used: Vec<u32> = self.state.generations.iter().map(|g| g.slot).collect();
        (0..MAX_POLICY_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or_else(|| {
                anyhow!(
                    "all {MAX_POLICY_SLOTS} policy slots hold policies in use: release targets or \
                     replace policies rather than loading new ones"
                )
            })
    }

    /// Loads `policy` into a free slot as a new generation.
    fn load_generation(&mut self, policy: Policy, path: PathBuf, text: String) -> Result<u64> {
        if policy.needs_lsm() && !self.lsm {
            bail!(
                "policy {} has exec or file rules, and this kernel does not run BPF-LSM. {}",
                policy.name,
                enforcer::LSM_FIX
            );
        }
        let slot = self.free_slot()?;
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
        let written =
            crate::compile::compile(&policy, slot, generation, &crate::compile::file_identity)
                .map_err(enforcer::EnforcerError::from)
                .and_then(|image| self.enforcer.write_slot(&image));
        if let Err(e) = written {
            self.enforcer.clear_slot(slot)?;
            self.state
                .generations
                .retain(|g| g.generation != generation);
            self.save()?;
            return Err(e).context(format!("cannot load policy {}", policy.name));
        }
        self.policies.insert(generation, Arc::new(policy));
        Ok(generation)
    }

    fn parse(source: &crate::control::PolicySource) -> Result<Policy> {
        Ok(Policy::parse(&source.path, &source.text)?)
    }

    fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Confine { target, policy } => self.confine(&target, &policy),
            Request::Release { target, all } => self.release(target.as_ref(), all),
            Request::Replace { policy } => self.replace(&policy),
            Request::List => return Response::targets(self.targets()),
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

    fn confine(
        &mut self,
        target: &Target,
        source: &crate::control::PolicySource,
    ) -> Result<String> {
        let (cgroup, cgroup_id) = resolve_target(target)?;
        if let Some(t) = self.state.targets.iter().find(|t| t.cgroup_id == cgroup_id) {
            bail!(
                "{} is already confined under policy {}: use `oxd ctl replace` to change the \
                 policy, or release it first",
                cgroup.display(),
                t.policy
            );
        }
        let policy = Self::parse(source)?;
        let name = policy.name.clone();
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
        });
        self.save()?;
        // The cgroup programs decide nothing for a cgroup that is not in CONFINED yet; the
        // map update below makes exec, file and network enforcement start together.
        let attached = self
            .enforcer
            .attach_network(&dir, cgroup_id, &label)
            .and_then(|()| self.enforcer.set_confined(cgroup_id, g.slot));
        if let Err(e) = attached {
            let _ = self.enforcer.remove_confined(cgroup_id);
            let _ = self.enforcer.detach_network(cgroup_id);
            self.state.targets.retain(|t| t.cgroup_id != cgroup_id);
            self.drop_unused(&name)?;
            self.save()?;
            return Err(e).context(format!("cannot confine {}", cgroup.display()));
        }
        self.metrics
            .set_policy(&label, &g.name, &g.sha256, g.generation as i64);
        tracing::info!(cgroup = %label, cgroup_id, policy = %name, generation, "confined");
        Ok(format!(
            "confined {} (cgroup id {cgroup_id}) under policy {name} generation {generation}",
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

    fn release(&mut self, target: Option<&Target>, all: bool) -> Result<String> {
        let ids: Vec<u64> = if all {
            self.state.targets.iter().map(|t| t.cgroup_id).collect()
        } else {
            let target = target.ok_or_else(|| anyhow!("name a target, or --all"))?;
            let known = match target {
                Target::Cgroup(path) => self
                    .state
                    .targets
                    .iter()
                    .find(|t| &t.cgroup == path)
                    .map(|t| t.cgroup_id),
                Target::Pid(_) => None,
            };
            let id = match known {
                Some(id) => id,
                None => resolve_target(target)?.1,
            };
            if !self.state.targets.iter().any(|t| t.cgroup_id == id) {
                bail!("that target is not confined by this daemon (see `oxd ctl list`)");
            }
            vec![id]
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
        let Some(pos) = self
            .state
            .targets
            .iter()
            .position(|t| t.cgroup_id == cgroup_id)
        else {
            return Ok(None);
        };
        let t = self.state.targets.remove(pos);
        self.drop_unused(&t.policy)?;
        self.metrics.clear_policy(&t.cgroup.display().to_string());
        Ok(Some(t.cgroup))
    }

    /// Forgets targets whose cgroup was removed: nothing can run in them any more, and their
    /// ids must not linger in the kernel's map.
    fn prune_removed(&mut self) -> Result<()> {
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

    fn replace(&mut self, source: &crate::control::PolicySource) -> Result<String> {
        let policy = Self::parse(source)?;
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
        let generation = self.load_generation(policy, source.path.clone(), source.text.clone())?;
        let g = self.state.gen(generation).expect("loaded").clone();
        let targets: Vec<TargetState> = self
            .state
            .targets
            .iter()
            .filter(|t| t.policy == name)
            .cloned()
            .collect();
        // Each target switches in one map update.
        for t in &targets {
            self.enforcer.set_confined(t.cgroup_id, g.slot)?;
            self.metrics.set_policy(
                &t.cgroup.display().to_string(),
                &g.name,
                &g.sha256,
                generation as i64,
            );
        }
        self.state.current.insert(name.clone(), generation);
        self.retire(old.generation)?;
        self.save()?;
        tracing::info!(policy = %name, from = old.generation, to = generation, "replaced");
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
                TargetInfo {
                    cgroup: t.cgroup.clone(),
                    cgroup_id: t.cgroup_id,
                    policy: t.policy.clone(),
                    sha256: g.map(|g| g.sha256.clone()).unwrap_or_default(),
                    generation: g.map_or(0, |g| g.generation),
                }
            })
            .collect()
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
            records: self.records,
            denied: self.enforcer.denied_events()?,
            ringbuf_lost: self.enforcer.lost_events()?,
        })
    }

    /// Writes every decision waiting in the ring buffer, then any new losses.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            let Some(event) = decode_event(&item) else {
                continue;
            };
            let policy = self.policies.get(&event.generation).cloned();
            let record = Record::from_event(&event, policy.as_deref(), &self.clock);
            self.metrics.record(&record);
            self.audit
                .write(&record)
                .context("cannot write the audit log")?;
            self.records += 1;
        }
        self.report_losses()?;
        self.audit.flush().context("cannot write the audit log")
    }

    fn report_losses(&mut self) -> Result<()> {
        let lost = self.enforcer.lost_events()?;
        self.metrics.set_lost(lost);
        if lost > self.state.reported_lost {
            let count = lost - self.state.reported_lost;
            tracing::warn!(
                "{count} decisions were made but not recorded: the ring buffer was full"
            );
            self.audit
                .write_lost(None, count)
                .context("cannot write the audit log")?;
            self.audit.flush().context("cannot write the audit log")?;
            self.state.reported_lost = lost;
            self.save()?;
        }
        Ok(())
    }

    /// `--on-exit release`: lifts all enforcement and removes the pins.
    fn release_everything(&mut self) -> Result<()> {
        self.release(None, true)?;
        self.enforcer.detach_lsm()?;
        self.state = State::default();
        self.save()?;
        fs::remove_dir_all(&self.pin_dir)
            .with_context(|| format!("cannot remove {}", self.pin_dir.display()))?;
        Ok(())
    }
}

/// Binds the control socket: its directory is created 0700 if missing, the socket is 0600,
/// and a stale socket (nobody answering) is replaced.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    if path.exists() {
        refuse_if_answering(path)?;
        fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

fn refuse_if_answering(socket: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("another oxd daemon is answering on {}", socket.display());
    }
    Ok(())
}

type Call = (Request, oneshot::Sender<Response>);

/// Serves one client: one request line, one response line.
async fn serve_client(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let allowed = nix::unistd::geteuid().as_raw();
    let response = match stream.peer_cred() {
        Ok(cred) if cred.uid() == allowed => None,
        Ok(cred) => Some(Response::error(format!(
            "uid {} may not control this daemon (only uid {allowed})",
            cred.uid()
        ))),
        Err(e) => Some(Response::error(format!("cannot identify the caller: {e}"))),
    };
    let (read, mut write) = stream.into_split();
    let response = match response {
        Some(r) => r,
        None => {
            let mut line = String::new();
            let mut reader = BufReader::new(read);
            match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if calls.send((request, tx)).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
                    }
                    Err(e) => Response::error(format!("malformed request: {e}")),
                },
                _ => Response::error("no request received"),
            }
        }
    };
    if let Ok(mut bytes) = serde_json::to_vec(&response) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

/// `oxd daemon`.
pub fn daemon(args: DaemonArgs) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: DaemonArgs) -> Result<i32> {
    let socket = args.socket.clone();
    let metrics_addr = args.metrics;
    // Before touching any pin: another daemon may own them.
    refuse_if_answering(&socket)?;
    let mut daemon = Daemon::start(args)?;
    if let Some(addr) = metrics_addr {
        daemon.metrics.serve(addr)?;
    }
    let events = daemon.enforcer.take_events()?;
    // SAFETY: the ring buffer owns its map fd, which stays open for as long as the AsyncFd.
    let mut events = unsafe { AsyncFd::register(events) }
        .map_err(|e| e.into_parts().1)
        .context("cannot watch the decision ring buffer")?;
    // Decisions made while no daemon was reading.
    daemon.drain(events.get_mut())?;
    let listener = bind_socket(&socket)?;
    let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    eprintln!(
        "oxd daemon: listening on {} ({}; {} targets; audit log {})",
        socket.display(),
        if daemon.adopted {
            "adopted pinned enforcement"
        } else {
            "fresh"
        },
        daemon.state.targets.len(),
        daemon.args.audit_log.display()
    );
    let outcome: Result<()> = async {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(serve_client(stream, calls_tx.clone()));
                    }
                }
                Some((request, reply)) = calls.recv() => {
                    // Decisions made under the old state are written before the change.
                    daemon.drain(events.get_mut())?;
                    let response = daemon.handle(request);
                    let _ = reply.send(response);
                }
                guard = events.readable_mut() => {
                    let mut guard = guard.context("cannot poll the decision ring buffer")?;
                    daemon.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    daemon.prune_removed()?;
                    daemon.report_losses()?;
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    daemon.drain(events.get_mut())?;
    outcome?;
    let _ = fs::remove_file(&socket);
    match daemon.args.on_exit {
        OnExit::Keep => {
            daemon.save()?;
            eprintln!(
                "oxd daemon: exiting; {} targets stay confined (pinned under {})",
                daemon.state.targets.len(),
                daemon.pin_dir.display()
            );
        }
        OnExit::Release => {
            daemon.release_everything()?;
            eprintln!("oxd daemon: exiting; every target released, pins removed");
        }
    }
    Ok(0)
}
