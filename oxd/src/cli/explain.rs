//! `oxd explain`: prints what a policy decides for one action, and which rule decides it.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use oxd::{
    control::{call, Request, Target, DEFAULT_SOCKET},
    evaluate::{NamespaceOp, SocketKind},
    explain::{explain, live_state, Probe},
    policy::{Mode, Policy},
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["exec", "map", "open", "connect", "socket", "namespace", "ptrace", "signal", "tty_inject", "unix", "signal_owner", "change"])))]
#[command(group(clap::ArgGroup::new("access").multiple(true).args(["read", "write"])))]
#[command(group(clap::ArgGroup::new("source").required(true).args(["policy", "cgroup", "pid"])))]
#[expect(
    clippy::struct_excessive_bools,
    reason = "clap flags: one per kind of action, and each action's options"
)]
pub(crate) struct ExplainArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Instead of a policy file: the policy a daemon confines this cgroup (or one it is below)
    /// under now, with its live state (budgets used, connections open, grants, the kill switch).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// As --cgroup, for the cgroup this process is in.
    #[arg(long, value_name = "PID")]
    pid: Option<i32>,
    /// The daemon's control socket (with --cgroup or --pid).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    daemon_socket: PathBuf,
    /// Executing this file.
    #[arg(long, value_name = "PATH")]
    exec: Option<PathBuf>,
    /// Mapping this file executable: a shared library, or a program the dynamic loader runs.
    #[arg(long, value_name = "PATH")]
    map: Option<PathBuf>,
    /// Opening this file (with --read and/or --write).
    #[arg(long, value_name = "PATH", requires = "access")]
    open: Option<PathBuf>,
    /// The open is for reading.
    #[arg(long, requires = "open")]
    read: bool,
    /// The open is for writing.
    #[arg(long, requires = "open")]
    write: bool,
    /// Connecting to this address (IP:PORT, or [IPV6]:PORT).
    #[arg(long, value_name = "ADDR")]
    connect: Option<SocketAddr>,
    /// The connect is on a UDP socket (default TCP).
    #[arg(long, requires = "connect")]
    udp: bool,
    /// Creating a socket no address rule governs: `icmp` (a ping socket), `raw`, or `other`
    /// (SCTP, MPTCP, UDP-Lite, ...).
    #[arg(long, value_name = "KIND", value_parser = ["icmp", "raw", "other"])]
    socket: Option<String>,
    /// A namespace, mount or chroot operation, by its audit name: userns-create, mount,
    /// umount, move-mount, pivot-root, chroot, capable (setns into an existing namespace).
    #[arg(long, value_name = "OP", value_parser = parse_namespace_op)]
    namespace: Option<NamespaceOp>,
    /// Ptrace access (attach, `process_vm_*`, `pidfd_getfd`, /proc/PID/mem, environ, ...) to a
    /// task (outside the agent's confinement unless --inside).
    #[arg(long)]
    ptrace: bool,
    /// Sending this signal number to a task (outside the confinement unless --inside).
    #[arg(long, value_name = "SIG")]
    signal: Option<i32>,
    /// TIOCSTI or TIOCLINUX on a terminal.
    #[arg(long)]
    tty_inject: bool,
    /// Connecting to the Unix socket at PATH (`@NAME` for an abstract name), created outside
    /// the confinement unless --inside.
    #[arg(long, value_name = "PATH")]
    unix: Option<String>,
    /// Choosing who gets a file's I/O signals (`fcntl` `F_SETOWN` and the like): `self` (the
    /// agent's own process, or nobody, with the default signal) or `other` (another process
    /// or process group, another signal, `O_ASYNC`, or an `ioctl` form).
    #[arg(long, value_name = "WHO", value_parser = ["self", "other"])]
    signal_owner: Option<String>,
    /// The other task or socket is inside the agent's confinement.
    #[arg(long)]
    inside: bool,
    /// Changing the file system at PATH by OP: create, truncate, unlink, rmdir, mkdir, mknod,
    /// symlink, rename-from, rename-to, link-from, link-to, chmod, chown, setxattr,
    /// removexattr, utimes.
    #[arg(long, num_args = 2, value_names = ["OP", "PATH"])]
    change: Option<Vec<String>>,
}

fn parse_namespace_op(name: &str) -> Result<NamespaceOp, String> {
    NamespaceOp::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = NamespaceOp::ALL.iter().map(|op| op.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

impl ExplainArgs {
    fn probe(&self) -> Result<Probe> {
        if let Some([op, path]) = self.change.as_deref() {
            return Ok(Probe::Change {
                op: op.clone(),
                path: PathBuf::from(path),
            });
        }
        if let Some(path) = &self.exec {
            return Ok(Probe::Exec(path.clone()));
        }
        if let Some(path) = &self.map {
            return Ok(Probe::MapExec(path.clone()));
        }
        if let Some(path) = &self.open {
            return Ok(Probe::Open {
                path: path.clone(),
                read: self.read,
                write: self.write,
            });
        }
        if let Some(addr) = self.connect {
            return Ok(Probe::Connect {
                addr,
                udp: self.udp,
            });
        }
        if let Some(kind) = self.socket.as_deref() {
            return Ok(Probe::Socket(match kind {
                "icmp" => SocketKind::Ping,
                "raw" => SocketKind::Raw,
                _ => SocketKind::Other,
            }));
        }
        if let Some(op) = self.namespace {
            return Ok(Probe::Namespace(op));
        }
        if self.ptrace {
            return Ok(Probe::Ptrace {
                inside: self.inside,
            });
        }
        if let Some(sig) = self.signal {
            return Ok(Probe::Signal {
                sig,
                inside: self.inside,
            });
        }
        if self.tty_inject {
            return Ok(Probe::TtyInject);
        }
        if let Some(who) = self.signal_owner.as_deref() {
            return Ok(Probe::SignalOwner { own: who == "self" });
        }
        if let Some(path) = &self.unix {
            return Ok(Probe::Unix {
                path: path.clone(),
                inside: self.inside,
            });
        }
        bail!(
            "name an action: --exec PATH, --map PATH, --open PATH --read|--write, --connect ADDR, \
             --socket KIND, --namespace OP, --ptrace, --signal SIG, --tty-inject, --unix PATH, --signal-owner WHO or --change OP PATH"
        )
    }
}

/// Prints the decision; returns the exit code: 0 if the action would happen (now, for a
/// confined target), 1 if not.
pub(crate) fn run(args: &ExplainArgs) -> Result<i32> {
    let (policy, live) = match (&args.policy, &args.cgroup, args.pid) {
        (Some(path), _, _) => (Policy::load(path)?, None),
        (None, cgroup, pid) => {
            let target = match (cgroup, pid) {
                (Some(cgroup), _) => Target::Cgroup(cgroup.clone()),
                (None, Some(pid)) => Target::Pid(pid),
                (None, None) => {
                    bail!("name a policy (--policy FILE) or a target (--cgroup, --pid)")
                }
            };
            let response = call(&args.daemon_socket, &Request::Show { target })?;
            if !response.ok {
                bail!("the daemon refused: {}", response.error.unwrap_or_default());
            }
            let shown = response
                .shown
                .context("the daemon's answer has no policy (an older daemon?)")?;
            let policy = Policy::parse(&shown.path, &shown.text)
                .with_context(|| format!("the target's policy {}", shown.path.display()))?;
            (policy, Some(shown.target))
        }
    };
    let probe = args.probe()?;
    let explanation = explain(&policy, &probe)?;
    println!("{}: {}", explanation.what, explanation.verdict);
    println!("  because: {}", explanation.why);
    println!(
        "  policy:  {} (sha256 {}), mode {}",
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str()
    );
    let mut happens = explanation.happens;
    if let Some(target) = live {
        println!(
            "  target:  {} (generation {})",
            target.cgroup.display(),
            target.generation
        );
        let lines = live_state(&policy, &probe, &explanation, &target);
        let blocked = lines.iter().any(|l| l.blocks);
        for line in &lines {
            println!("  now:     {}", line.text);
        }
        if blocked && policy.mode == Mode::Enforce {
            happens = false;
            println!("  so now:  deny (fails with EPERM)");
        }
    }
    Ok(i32::from(!happens))
}
