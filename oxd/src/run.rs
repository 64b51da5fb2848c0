//! `oxd run`: confine one command under a policy, from start to exit.
//!
//! Order matters: the policy is compiled and the programs are loaded and attached before the
//! command starts, so a policy that cannot be enforced never lets the command run unconfined.
//! The command joins its cgroup between fork and exec, so its own exec is already decided by
//! the policy. The event pump ([`crate::pump`]) records decisions on its own thread meanwhile,
//! so signal forwarding and the wait for the command never queue behind a flood of events.
//! When the command exits, whatever it left running in its cgroup is killed, the remaining
//! decisions are drained from the ring buffer, and oxd exits with the command's status.
//!
//! The command runs in its own session (`setsid`), so it has no controlling terminal of the
//! caller's. When oxd's stdin is a terminal, the command gets a pseudo-terminal of its own
//! instead (as its controlling terminal, and as each of its standard descriptors that is a
//! terminal in oxd), and oxd relays between the two ([`pty`]): the agent never holds the
//! caller's terminal. Descriptors that are not terminals (pipes, files) are passed as they are.

mod pty;
mod user;
mod watchdog;

use std::{
    ffi::OsString,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::ExitStatus,
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
pub use user::RunAs;

use self::watchdog::Watchdog;
use crate::{
    audit::{AuditLog, LimitRecord, Note, RecordFilter, Rotation},
    cgroup::{pids, AgentCgroup},
    enforcer::{record_setting, Enforcer},
    metrics::Metrics,
    policy::Policy,
    pump::{Book, Limits, Pump, PumpStats, Recorder},
};

/// Sets the policy's `[process] max_processes` on the agent's cgroup (`pids.max`), enabling the
/// pids controller above it where it is not.
fn limit_processes(policy: &Policy, cgroup: &AgentCgroup) -> Result<()> {
    if let Some(max) = policy.max_processes {
        let root = crate::host::cgroup2_mount()?;
        pids::enable_above(&root, cgroup.path())
            .and_then(|()| pids::set_max(cgroup.path(), &max.to_string()))
            .context("cannot set the policy's max_processes")?;
    }
    Ok(())
}

/// Writes a `limit` record of the forks the process limit refused (those of processes still
/// left are not counted: they are killed next).
fn record_refused_forks(policy: &Policy, cgroup: &AgentCgroup, pump: &Pump) {
    let Some(max) = policy.max_processes else {
        return;
    };
    let refused = pids::refused(cgroup.path());
    if refused == 0 {
        return;
    }
    let record = LimitRecord::new(
        cgroup.path(),
        cgroup.id(),
        (&policy.name, &policy.sha256, 1),
        max,
        refused,
    );
    if let Err(e) = pump.notes().write(Note::Limit(record)) {
        tracing::error!("cannot record {refused} forks refused by max_processes: {e:#}");
    }
}

/// Exit status when oxd itself fails before or around the command (as `env` and `timeout` do).
pub const EXIT_OXD_FAILED: i32 = 125;
/// Exit status when the command could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit status when the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// What `oxd run` does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Policy file (TOML) to enforce.
    pub policy: PathBuf,
    /// Append audit records (JSON lines) to this file; `None`: write them to stderr.
    pub audit_log: Option<PathBuf>,
    /// Size-based rotation of the audit log file.
    pub rotation: Option<Rotation>,
    /// Serve Prometheus metrics on this address, at /metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Which decisions to record: set in the policy's slot, so the kernel records only those.
    pub record: RecordFilter,
    /// The most records per second on each CPU (0: no limit); see `Enforcer::set_record_rate`.
    pub record_rate: u32,
    /// Size of the decision ring buffer in bytes (`enforcer::check_ring_size`).
    pub ring_size: u32,
    /// Run the command as this user (`NAME`, `UID`, `NAME:GROUP` or `UID:GID`) rather than as
    /// oxd's own user: privileges are dropped after confinement, before exec.
    pub user: Option<String>,
    /// The command to confine, and its arguments (at least the command).
    pub command: Vec<OsString>,
}

/// Runs the command and returns the exit code oxd should exit with.
pub fn run(args: &RunOptions) -> Result<i32> {
    if args.command.is_empty() {
        bail!("no command to run");
    }
    let policy = Arc::new(Policy::load(&args.policy)?);
    let run_as = args.user.as_deref().map(RunAs::parse).transpose()?;
    let mut audit = match &args.audit_log {
        Some(path) => AuditLog::append(path, args.record, args.rotation.clone())?,
        None => AuditLog::new(Box::new(io::stderr()), args.record),
    };

    let mut enforcer = Enforcer::load_with(&policy, args.ring_size, record_setting(args.record))?;
    enforcer.set_record_rate(args.record_rate)?;
    enforcer.attach_lsm()?;
    let cgroup = AgentCgroup::create(&format!("run-{}", std::process::id()))
        .context("cannot create the agent's cgroup")?;
    limit_processes(&policy, &cgroup)?;
    enforcer.confine(&cgroup)?;
    // From here on, oxd's death leaves nothing running unconfined (see `watchdog`).
    let watchdog = Watchdog::spawn(cgroup.path())?;
    enforcer.protect(&[std::process::id(), watchdog.pid()])?;
    protect_own_files(&mut enforcer, args, &mut audit)?;
    let events = enforcer.take_events()?;
    let metrics = Metrics::new();
    metrics.set_policy(
        &cgroup.path().display().to_string(),
        &policy.name,
        &policy.sha256,
        1,
    );
    if let Some(addr) = args.metrics {
        metrics.serve(addr)?;
    }
    tracing::info!(
        policy = %policy.name,
        cgroup = %cgroup.path().display(),
        cgroup_id = cgroup.id(),
        "confining {:?}",
        args.command
    );

    // `Enforcer::load` wrote the policy as generation 1; its counters were created for this
    // run, and the pump finishes after the agent is gone: the closing totals are complete.
    let book = Book::new().shared();
    Book::lock(&book).insert(1, Arc::clone(&policy));
    let recorder = Recorder::new(
        audit,
        book,
        metrics.clone(),
        enforcer.counters()?,
        PumpStats::new(0),
    )
    .with_tallies(enforcer.tallies()?)
    .naming_losses(Arc::clone(&policy))
    .complete_at_finish();
    let mut pump = Pump::start_with(events, recorder, Limits::for_ring(args.ring_size))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut relay = if pty::is_terminal(0) {
        Some(pty::Relay::open().context("cannot open a terminal for the command")?)
    } else {
        None
    };
    let outcome = runtime.block_on(supervise(
        &Command {
            argv: &args.command,
            run_as: run_as.as_ref(),
        },
        &cgroup,
        &watchdog,
        &mut pump,
        relay.as_mut(),
    ));

    record_refused_forks(&policy, &cgroup, &pump);
    // Nothing the agent started may outlive its confinement.
    let removed = cgroup.remove();
    if let Some(relay) = relay {
        relay.finish();
    }
    // Decisions are in the ring buffer before the system call that caused them returns, so
    // once the command has been reaped and its cgroup emptied, everything it did is there.
    let drained = pump.finish();
    // Our copies of the links go first: the watchdog still holds its own, so nothing is
    // detached yet. Then the watchdog, the last holder, detaches the programs as it exits,
    // after oxd is gone (detaching waits for the kernel's trampoline updates, about 0.1 s
    // per program under emulation): see `Watchdog::release`.
    drop(enforcer);
    watchdog.release(removed.is_err());
    drained?;
    removed.context("cannot remove the agent's cgroup")?;
    match outcome? {
        Supervised::Exited(status) => Ok(exit_code(status)),
        Supervised::NotStarted { error, code } => {
            let name = args.command[0].to_string_lossy();
            let hint = if error.raw_os_error() == Some(libc::EPERM) {
                " (denied by the policy's exec rules? see the audit log)"
            } else {
                ""
            };
            eprintln!("oxd: cannot run `{name}`: {error}{hint}");
            Ok(code)
        }
        // `pump.finish()` above returns the pump's error; it stops for no other reason.
        Supervised::PumpFailed => Err(anyhow!("the event pump stopped")),
        Supervised::WatchdogDied => Err(anyhow!(
            "oxd's watchdog process died (killed from outside?): the agent was stopped, since \
             oxd's own death would no longer stop it"
        )),
    }
}

/// Puts oxd's own files out of the agent's reach: its binary, the policy, the audit log (and
/// each file a rotation opens).
fn protect_own_files(
    enforcer: &mut Enforcer,
    args: &RunOptions,
    audit: &mut AuditLog,
) -> Result<()> {
    let mut files = enforcer.file_guard()?;
    if let Ok(exe) = std::env::current_exe() {
        files.protect(&exe, false)?;
    }
    files.protect(&args.policy, false)?;
    if let Some(log) = &args.audit_log {
        files.protect(log, false)?;
        audit.on_new_file(crate::audit::protect_each(files));
    }
    Ok(())
}

/// How supervising the command ended.
enum Supervised {
    /// The command ran and exited.
    Exited(ExitStatus),
    /// The command could not be started; oxd exits with `code`.
    NotStarted { error: io::Error, code: i32 },
    /// The event pump stopped (it failed).
    PumpFailed,
    /// The watchdog exited while the command ran.
    WatchdogDied,
}

/// The command `oxd run` starts, and whom it runs as.
struct Command<'a> {
    argv: &'a [OsString],
    run_as: Option<&'a RunAs>,
}

/// Starts the command in `cgroup`, in its own session (behind `relay`'s terminal if there is
/// one), forwards SIGINT, SIGTERM and SIGHUP to it, and waits for it. The event pump records
/// decisions meanwhile, on its own thread.
async fn supervise(
    command: &Command<'_>,
    cgroup: &AgentCgroup,
    watchdog: &Watchdog,
    pump: &mut Pump,
    mut relay: Option<&mut pty::Relay>,
) -> Result<Supervised> {
    let procs = cgroup.open_procs()?;
    let procs_fd = procs.as_raw_fd();

    close_inherited_terminals();
    let argv = command.argv;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let run_as = command.run_as.cloned();
    if let Some(run_as) = &run_as {
        cmd.envs(run_as.environment());
    }
    let controlling_terminal = relay.is_some();
    if let Some(relay) = relay.as_deref() {
        let slave = || {
            relay
                .slave()
                .context("cannot hand the command its terminal")
        };
        cmd.stdin(std::process::Stdio::from(slave()?));
        if pty::is_terminal(1) {
            cmd.stdout(std::process::Stdio::from(slave()?));
        }
        if pty::is_terminal(2) {
            cmd.stderr(std::process::Stdio::from(slave()?));
        }
    }
    confine_on_start(&mut cmd, procs_fd, run_as, controlling_terminal);
    let mut cmd = tokio::process::Command::from(cmd);
    let spawned = cmd.spawn();
    drop(procs);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let code = if error.kind() == io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXEC
            };
            return Ok(Supervised::NotStarted { error, code });
        }
    };
    if let Some(relay) = relay.as_deref_mut() {
        let out = if pty::is_terminal(1) || !pty::is_terminal(2) {
            1
        } else {
            2
        };
        relay
            .start(out)
            .context("cannot relay the command's terminal")?;
    }
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigwinch = signal(SignalKind::window_change())?;
    let forward = |sig: nix::sys::signal::Signal| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    };
    let watchdog_exited = watchdog.exited();
    tokio::pin!(watchdog_exited);
    let status: ExitStatus = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for the command")?,
            () = pump.stopped() => return Ok(Supervised::PumpFailed),
            _ = &mut watchdog_exited => return Ok(Supervised::WatchdogDied),
            _ = sigint.recv() => forward(nix::sys::signal::Signal::SIGINT),
            _ = sigterm.recv() => forward(nix::sys::signal::Signal::SIGTERM),
            _ = sighup.recv() => forward(nix::sys::signal::Signal::SIGHUP),
            _ = sigwinch.recv() => {
                if let Some(relay) = relay.as_deref() {
                    relay.resize();
                }
            }
        }
    };
    Ok(Supervised::Exited(status))
}

/// What the command does between fork and exec: join its cgroup (so its own exec is decided),
/// drop privileges (`--user`), die with oxd, leave the caller's session, and take its own
/// terminal as its controlling terminal if it has one.
fn confine_on_start(
    cmd: &mut std::process::Command,
    procs_fd: i32,
    run_as: Option<RunAs>,
    controlling_terminal: bool,
) {
    // SAFETY: the closure only makes async-signal-safe system calls (write, prctl, getppid,
    // setsid, ioctl, and those of `RunAs::apply`).
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            // Confined first, then without privileges (which also clears the parent-death
            // signal, so that comes after).
            if let Some(run_as) = &run_as {
                run_as.apply()?;
            }
            // If oxd dies, its agent dies too rather than running on unconfined.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Its own session: no controlling terminal of the caller's...
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // ...and its own terminal as its controlling terminal, if it has one.
            if controlling_terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Marks close-on-exec every terminal descriptor above stderr that oxd inherited from its
/// caller (oxd's own are close-on-exec already), so the command never holds the caller's
/// terminal through a stray descriptor.
fn close_inherited_terminals() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for fd in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2 && pty::is_terminal(fd))
    {
        // SAFETY: setting a flag on a descriptor this process holds.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_OXD_FAILED,
    }
}
