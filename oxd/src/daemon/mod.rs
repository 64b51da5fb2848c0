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
//! - **Events.** An event pump ([`crate::pump`]) on a thread of its own writes the decisions
//!   to the audit log, naming each by the policy of its generation (the daemon's book keeps
//!   retired generations too), and reports losses; the main loop never waits for it.
//! - **Exit.** SIGTERM or SIGINT: `--on-exit keep` (default) leaves enforcement pinned;
//!   `--on-exit release` releases every target and removes the pins.
//!
//! The parts: this module starts the daemon, runs its main loop and stops it; `state` is the
//! state file; `reconcile` plans and applies what a restart must complete or undo; `ops`
//! handles the control requests; `socket` serves the control socket.

mod grants;
mod limits;
mod ops;
mod reconcile;
mod socket;
mod state;
mod switch;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, MutexGuard},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use oxd_common::MAP_LAYOUT_VERSION;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use self::{
    reconcile::{Cgroups, Kernel},
    socket::Call,
    state::{State, TargetState},
};
use crate::{
    audit::{AuditLog, RecordFilter, Rotation},
    control::DEFAULT_SOCKET,
    enforcer::{self, Enforcer, LoadOptions},
    host,
    metrics::Metrics,
    policy::Policy,
    pump::{Book, Limits, Pump, PumpStats, Recorder, SharedBook},
    rcu::RcuBarrier,
};

/// What SIGTERM does to enforcement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExit {
    /// Leave every target confined (pinned); a restarted daemon adopts them.
    #[default]
    Keep,
    /// Release every target and remove the pins.
    Release,
}

/// How the daemon runs. [`DaemonOptions::default`] has the defaults `oxd daemon` documents.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Control socket (created mode 0600; only peers with the daemon's uid are answered).
    pub socket: PathBuf,
    /// Directory for the daemon's state file.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub bpffs: PathBuf,
    /// Audit log (JSON lines, hash-chained; appended to, chain continued).
    pub audit_log: PathBuf,
    /// Size-based rotation of the audit log.
    pub rotation: Option<Rotation>,
    /// Which decisions to record: set in every slot's configuration, so the kernel records
    /// only those (policies adopted from an earlier daemon are set too).
    pub record: RecordFilter,
    /// The most records each agent sends per second on each CPU (0: no limit).
    pub record_rate: u32,
    /// Size of the decision ring buffer in bytes (`enforcer::check_ring_size`). A pinned ring
    /// of another size is refused (`EnforcerError::RingSizeMismatch`).
    pub ring_size: u32,
    /// Serve Prometheus metrics on this address, at /metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// What SIGTERM/SIGINT does to enforcement.
    pub on_exit: OnExit,
}

/// How long the final drain of a daemon that keeps its pins may take (the ring stays pinned:
/// what is left is the next daemon's to write).
const KEEP_FINAL_DRAIN: Duration = Duration::from_millis(300);

/// How long after answering a replacement the daemon retires the generation it superseded.
const RETIRE_AFTER: Duration = Duration::from_millis(5);

/// Where the daemon keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oxd";
/// Where the daemon pins maps and links unless told otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/oxd";
/// The daemon's audit log unless told otherwise.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/oxd/audit.jsonl";

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            audit_log: PathBuf::from(DEFAULT_AUDIT_LOG),
            rotation: None,
            record: RecordFilter::All,
            record_rate: 0,
            ring_size: oxd_common::RING_BUF_BYTES,
            metrics: None,
            on_exit: OnExit::Keep,
        }
    }
}

struct Daemon {
    /// Held for the daemon's life: one daemon per state directory, and per pin directory.
    _lock: nix::fcntl::Flock<fs::File>,
    _pin_lock: nix::fcntl::Flock<fs::File>,
    args: DaemonOptions,
    pin_dir: PathBuf,
    state_path: PathBuf,
    enforcer: Enforcer,
    state: State,
    /// The policy of every generation in a slot, and of recently retired ones, for the pump.
    book: SharedBook,
    /// What the pump has written (records, losses reported).
    stats: Arc<PumpStats>,
    barrier: RcuBarrier,
    lsm: bool,
    adopted: bool,
    metrics: Metrics,
    /// Generations a replacement just superseded: retired right after its answer is sent
    /// ([`Self::retire_replaced`]), so the caller does not wait for running BPF programs or
    /// for the old slot to be cleared.
    replaced: Vec<u64>,
    /// The pump's way to write the daemon's own records (the kill switch's).
    notes: Option<crate::pump::Notes>,
    /// Every decision the pump records, for subscribers.
    decisions: tokio::sync::broadcast::Sender<Arc<crate::audit::Record>>,
}

/// Decisions a subscriber may fall behind by before it is told it lagged.
const SUBSCRIPTION_BACKLOG: usize = 4096;

/// Opens the targets' cgroup directories that exist: by path, the open directory and its inode.
fn open_cgroups(targets: &[TargetState]) -> HashMap<PathBuf, (fs::File, u64)> {
    let mut open = HashMap::new();
    for t in targets {
        if let Ok(dir) = fs::File::open(&t.cgroup) {
            if let Ok(meta) = dir.metadata() {
                open.insert(t.cgroup.clone(), (dir, meta.ino()));
            }
        }
    }
    open
}

impl Daemon {
    /// Takes the locks, loads or adopts the kernel side, reconciles it with the state file,
    /// and starts the event pump.
    fn start(args: DaemonOptions) -> Result<(Self, Pump)> {
        host::check_bpffs(&args.bpffs)?;
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
        let state = State::load(&state_path, adopted, &pin_dir)?;
        let lsm = host::bpf_lsm_active();
        if !lsm {
            tracing::warn!(
                "BPF-LSM is not active: only network rules can be enforced. {}",
                enforcer::LSM_FIX
            );
        }
        let mut enforcer = Enforcer::open(&LoadOptions {
            lsm,
            pin_dir: Some(pin_dir.clone()),
            ring_size: args.ring_size,
            record: enforcer::record_setting(args.record),
        })?;
        enforcer.protect(&[std::process::id()])?;
        if lsm {
            enforcer.attach_lsm()?;
        }
        if let Some(parent) = args.audit_log.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut audit = AuditLog::append(&args.audit_log, args.record, args.rotation.clone())?;
        // oxd's own files, out of every agent's reach: its binary, its state directory, its
        // audit log (and each file a rotation opens).
        let mut files = enforcer.file_guard()?;
        files.clear()?;
        if let Ok(exe) = std::env::current_exe() {
            files.protect(&exe, false)?;
        }
        files.protect(&args.state_dir, true)?;
        // The pins too (bpffs is out of reach for every agent anyway; this names them).
        for dir in [pin_dir.clone(), pin_dir.join("maps"), pin_dir.join("links")] {
            files.protect(&dir, true)?;
        }
        files.protect(&args.audit_log, false)?;
        audit.on_new_file(crate::audit::protect_each(files));
        let mut daemon = Self {
            _lock: lock,
            _pin_lock: pin_lock,
            args,
            pin_dir,
            state_path,
            enforcer,
            // Without pins, the state is a fresh one: no losses reported yet.
            stats: PumpStats::new(state.reported_lost),
            state,
            book: Book::new().shared(),
            barrier: RcuBarrier::new().context(
                "cannot create the map-in-map oxd uses to wait for running BPF programs",
            )?,
            lsm,
            adopted,
            metrics: Metrics::new(),
            replaced: Vec::new(),
            notes: None,
            decisions: tokio::sync::broadcast::channel(SUBSCRIPTION_BACKLOG).0,
        };
        daemon.reconcile()?;
        let pump = daemon.start_pump(audit)?;
        daemon.notes = Some(pump.notes());
        daemon.save()?;
        Ok((daemon, pump))
    }

    /// Sets what every slot records, and starts the pump writing to `audit`: decisions made
    /// while no daemon was reading are its first.
    fn start_pump(&mut self, audit: AuditLog) -> Result<Pump> {
        (self.stats).set_tallies_written(state::TallyState::keys(&self.state.tallies_written));
        let record = enforcer::record_setting(self.args.record);
        self.enforcer.set_record(record)?;
        self.enforcer.set_record_rate(self.args.record_rate)?;
        let events = self.enforcer.take_events()?;
        let recorder = Recorder::new(
            audit,
            Arc::clone(&self.book),
            self.metrics.clone(),
            self.enforcer.counters()?,
            Arc::clone(&self.stats),
        )
        .with_tallies(self.enforcer.tallies()?)
        .with_tap(self.decisions.clone());
        Pump::start_with(events, recorder, pump_limits(&self.args))
    }

    /// Brings the kernel and the state file into agreement after a restart: completes or
    /// undoes whatever a crash interrupted (see [`reconcile`]).
    fn reconcile(&mut self) -> Result<()> {
        let kernel = Kernel {
            slots: self.enforcer.slot_generations()?.into_iter().collect(),
            confined: self.enforcer.confined()?.into_iter().collect(),
        };
        let open = open_cgroups(&self.state.targets);
        let cgroups: Cgroups = open
            .iter()
            .map(|(path, (_, id))| (path.clone(), *id))
            .collect();
        let plan = reconcile::plan(&self.state, &kernel, &cgroups);
        // Every generation that was completely loaded can have decisions in the ring buffer,
        // the ones retired now too.
        let retired: Vec<u64> = plan.retired().collect();
        for g in &self.state.generations {
            if plan.state.gen(g.generation).is_none() && !retired.contains(&g.generation) {
                continue;
            }
            match Policy::parse(&g.path, &g.text) {
                Ok(policy) => self.book().insert(g.generation, Arc::new(policy)),
                Err(e) => tracing::error!(
                    generation = g.generation,
                    "cannot parse adopted policy {}: {e:#} (it stays enforced; its records \
                     will not name rules)",
                    g.name
                ),
            }
        }
        let dirs: HashMap<PathBuf, fs::File> = open
            .into_iter()
            .map(|(path, (dir, _))| (path, dir))
            .collect();
        reconcile::apply(&plan.actions, &mut self.enforcer, &self.barrier, &dirs)?;
        self.state = plan.state;
        for generation in retired {
            self.book().retire(generation);
        }
        for target in &self.state.targets {
            if let Some(g) = self.state.current_gen(&target.policy) {
                self.metrics.set_policy(
                    &target.cgroup.display().to_string(),
                    &g.name,
                    &g.sha256,
                    g.generation,
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

    /// Writes the state file, with the losses the pump has reported so far.
    fn save(&mut self) -> Result<()> {
        self.state.reported_lost = self.stats.reported_lost();
        self.state.tallies_written = state::TallyState::all(&self.stats.tallies_written());
        self.state.save(&self.state_path)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        Book::lock(&self.book)
    }

    /// `--on-exit release`: lifts all enforcement and removes the pins.
    fn release_everything(&mut self) -> Result<()> {
        self.release(None, true)?;
        self.enforcer.detach_lsm()?;
        self.state = State::default();
        self.state.save(&self.state_path)?;
        fs::remove_dir_all(&self.pin_dir)
            .with_context(|| format!("cannot remove {}", self.pin_dir.display()))?;
        Ok(())
    }
}

/// How the daemon's pump paces itself: kept pins keep the ring, and what the exit leaves in it
/// is the next daemon's first records, so a flood need not hold up the exit.
fn pump_limits(args: &DaemonOptions) -> Limits {
    Limits {
        final_drain_time: (args.on_exit == OnExit::Keep).then_some(KEEP_FINAL_DRAIN),
        ..Limits::for_ring(args.ring_size)
    }
}

/// `oxd daemon`.
pub fn daemon(args: DaemonOptions) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: DaemonOptions) -> Result<i32> {
    let socket = args.socket.clone();
    let metrics_addr = args.metrics;
    // Before touching any pin: another daemon may own them.
    socket::refuse_if_answering(&socket)?;
    let (mut daemon, mut pump) = Daemon::start(args)?;
    if let Some(addr) = metrics_addr {
        daemon.metrics.serve(addr)?;
    }
    let listener = socket::bind_socket(&socket)?;
    let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let stats = Arc::clone(&daemon.stats);
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
                        tokio::spawn(socket::serve_client(
                            stream,
                            calls_tx.clone(),
                            daemon.decisions.clone(),
                        ));
                    }
                }
                Some((request, reply)) = calls.recv() => {
                    // One replacement's old generation at most waits: the next request
                    // retires it first.
                    daemon.retire_replaced()?;
                    let response = daemon.handle(request);
                    let _ = reply.send(response);
                }
                // Once the client's task has had its turn to write the answer (this runtime
                // has one thread: retiring at once would hold the answer back).
                () = tokio::time::sleep(RETIRE_AFTER), if daemon.has_replaced() => {
                    daemon.retire_replaced()?;
                }
                // The count of reported losses goes into the state file at once, so that a
                // restarted daemon does not report them again.
                () = stats.lost_reported() => daemon.save()?,
                // The pump stops by itself only when it fails: `finish` below says why.
                () = pump.stopped() => break,
                _ = tick.tick() => {
                    daemon.prune_removed()?;
                    daemon.report_limits()?;
                    daemon.prune_grants()?;
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // Decisions still in the ring buffer are written; the pins stay.
        pump.finish()?;
        return Err(e);
    }
    let _ = fs::remove_file(&socket);
    match daemon.args.on_exit {
        OnExit::Keep => {
            // Decisions still in the ring buffer are written, for at most KEEP_FINAL_DRAIN
            // (the rest stays in the pinned ring for the next daemon).
            pump.finish()?;
            daemon.save()?;
            eprintln!(
                "oxd daemon: exiting; {} targets stay confined (pinned under {})",
                daemon.state.targets.len(),
                daemon.pin_dir.display()
            );
        }
        OnExit::Release => {
            // Released first: with nothing confined, no decision can come after the final
            // drain, which then writes everything the ring holds (it goes with the pins).
            let released = daemon.release_everything();
            pump.finish()?;
            released?;
            eprintln!("oxd daemon: exiting; every target released, pins removed");
        }
    }
    Ok(0)
}
