//! `oxd ctl`: talk to a running `oxd daemon`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use oxd::control::{
    call, GrantProtocol, Halt, PolicySource, Request, Status, Target, TargetInfo, DEFAULT_SOCKET,
};

#[derive(Debug, clap::Args)]
pub(crate) struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    #[command(subcommand)]
    pub(crate) command: CtlCommand,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// A cgroup v2 directory (for example /sys/fs/cgroup/agents/a1).
    #[arg(long)]
    pub(crate) cgroup: Option<PathBuf>,
    /// A process: its cgroup is the target.
    #[arg(long)]
    pub(crate) pid: Option<i32>,
}

impl TargetArgs {
    fn target(&self) -> Option<Target> {
        match (&self.cgroup, self.pid) {
            (Some(cgroup), _) => Some(Target::Cgroup(cgroup.clone())),
            (None, Some(pid)) => Some(Target::Pid(pid)),
            (None, None) => None,
        }
    }
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct ReleaseTargetArgs {
    /// A confined cgroup v2 directory.
    #[arg(long)]
    pub(crate) cgroup: Option<PathBuf>,
    /// A process: its confined cgroup is released.
    #[arg(long)]
    pub(crate) pid: Option<i32>,
    /// Every confined target.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CtlCommand {
    /// Confine a cgroup (and everything below it), or the cgroup of a process, under a policy.
    Confine {
        #[command(flatten)]
        target: TargetArgs,
        /// Policy file (TOML); its `name` identifies it to `replace` and `list`.
        #[arg(long)]
        policy: PathBuf,
    },
    /// Stop confining a target (enforcement is lifted at once).
    Release {
        #[command(flatten)]
        target: ReleaseTargetArgs,
    },
    /// Replace the loaded policy with the same name, atomically for every target under it.
    Replace {
        /// The new policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
    },
    /// Kill switch: deny every action of a confined target from now on (its next action is
    /// denied, recorded with the reason `halted`), until `resume`. Open files and connections
    /// stay usable: `freeze` or `kill` stop those too.
    #[command(name = "deny-all")]
    DenyAll {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Kill switch: `deny-all`, and freeze the target's processes (cgroup.freeze) until
    /// `resume`.
    Freeze {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Kill switch: `deny-all`, and kill the target's processes (cgroup.kill). The target
    /// stays confined and halted until `resume` or `release`.
    Kill {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Lift the kill switch: the target's policy decides again, frozen processes thaw.
    Resume {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Allow one exact action of a confined target, for a rule that requires a grant: the
    /// kernel lets it happen `--uses` times (then a repeat is denied), until `--expires`.
    Grant(GrantArgs),
    /// Withdraw a grant (by the number `grant` printed; `list` shows them).
    Revoke {
        /// The grant's number.
        id: u32,
    },
    /// List confined targets and their policies.
    List {
        /// Print JSON (an array of targets).
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's state and counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `oxd ctl`: returns the exit code.
pub(crate) fn ctl(args: &CtlArgs) -> Result<i32> {
    let request = match &args.command {
        CtlCommand::Confine { target, policy } => Request::Confine {
            target: target
                .target()
                .context("name a target: --cgroup DIR or --pid PID")?,
            policy: PolicySource::read(policy)?,
        },
        CtlCommand::Release { target } => Request::Release {
            target: match (&target.cgroup, target.pid) {
                (Some(c), _) => Some(Target::Cgroup(c.clone())),
                (None, Some(p)) => Some(Target::Pid(p)),
                _ => None,
            },
            all: target.all,
        },
        CtlCommand::Replace { policy } => Request::Replace {
            policy: PolicySource::read(policy)?,
        },
        CtlCommand::DenyAll { target } => halt(target, Halt::DenyAll)?,
        CtlCommand::Freeze { target } => halt(target, Halt::Freeze)?,
        CtlCommand::Kill { target } => halt(target, Halt::Kill)?,
        CtlCommand::Resume { target } => Request::Resume {
            target: target
                .target()
                .context("name a target: --cgroup DIR or --pid PID")?,
        },
        CtlCommand::Grant(grant) => grant.request()?,
        CtlCommand::Revoke { id } => Request::Revoke { id: *id },
        CtlCommand::List { .. } => Request::List,
        CtlCommand::Status { .. } => Request::Status,
    };
    let response = call(&args.socket, &request)?;
    if !response.ok {
        eprintln!(
            "oxd: error: {}",
            response.error.as_deref().unwrap_or("the daemon refused")
        );
        return Ok(1);
    }
    match &args.command {
        CtlCommand::List { json } => print_targets(response.targets.unwrap_or_default(), *json)?,
        CtlCommand::Status { json } => {
            print_status(
                &response.status.context("the daemon sent no status")?,
                *json,
            )?;
        }
        _ => {
            if let Some(message) = response.message {
                println!("{message}");
            }
        }
    }
    Ok(0)
}

/// `oxd ctl grant` (and `oxd grant`).
#[derive(Debug, clap::Args)]
pub(crate) struct GrantArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// The action: a connect to (or, with --udp, a datagram sent to) ADDR:PORT ([IPV6]:PORT).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) connect: std::net::SocketAddr,
    /// The protocol of the connect.
    #[arg(long, value_enum, default_value = "tcp")]
    pub(crate) protocol: GrantProtocol,
    /// How many times the action may happen.
    #[arg(long, default_value_t = 1)]
    pub(crate) uses: u64,
    /// How long the grant lasts (`30s`, `10m`, `1h`; at most 7 days).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) expires: std::time::Duration,
}

impl GrantArgs {
    pub(crate) fn request(&self) -> Result<Request> {
        Ok(Request::Grant {
            target: self
                .target
                .target()
                .context("name a target: --cgroup DIR or --pid PID")?,
            connect: Some(self.connect),
            protocol: self.protocol,
            uses: self.uses,
            expires_in_ms: u64::try_from(self.expires.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

fn halt(target: &TargetArgs, how: Halt) -> Result<Request> {
    Ok(Request::Halt {
        target: target
            .target()
            .context("name a target: --cgroup DIR or --pid PID")?,
        how,
    })
}

/// The first 16 hex digits of a hash, as the listings show it.
fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}

fn print_targets(targets: Vec<TargetInfo>, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&targets)?);
    } else if targets.is_empty() {
        println!("nothing confined");
    } else {
        for t in targets {
            let halted = t
                .halted
                .map(|h| format!("  HALTED ({})", h.name()))
                .unwrap_or_default();
            println!(
                "{}  (cgroup id {})  policy {} generation {} sha256 {}{halted}",
                t.cgroup.display(),
                t.cgroup_id,
                t.policy,
                t.generation,
                short(&t.sha256)
            );
            for g in &t.grants {
                println!(
                    "  grant {}: {}, {} use(s) left, {}",
                    g.id,
                    g.action,
                    g.uses,
                    if g.expires_in_ms == 0 {
                        "expired".to_owned()
                    } else {
                        format!("expires in {} s", g.expires_in_ms / 1000)
                    }
                );
            }
            for b in &t.budgets {
                let window = b.refills_in_ms.map_or_else(
                    || "no window running".to_owned(),
                    |ms| format!("refills in {}.{} s", ms / 1000, ms % 1000 / 100),
                );
                println!(
                    "  budget of {}: {} of {} per {} used, {window}",
                    b.rule, b.used, b.count, b.per
                );
            }
            for c in &t.connections {
                println!("  connections of {}: {} of {} open", c.rule, c.open, c.max);
            }
        }
    }
    Ok(())
}

fn print_status(status: &Status, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let adopted = if status.adopted {
        ", adopted pinned enforcement"
    } else {
        ""
    };
    println!(
        "oxd daemon {} (pid {}){adopted}",
        status.version, status.pid
    );
    let lsm = if status.lsm {
        "attached (exec and file rules enforced)"
    } else {
        "not available (network rules only)"
    };
    println!("BPF-LSM: {lsm}");
    println!("pins: {}", status.bpffs.display());
    println!("audit log: {}", status.audit_log.display());
    println!(
        "targets: {}; newest generation: {}",
        status.targets, status.generation
    );
    for p in &status.policies {
        println!(
            "  policy {} generation {} (slot {}, {} targets) sha256 {}",
            p.name,
            p.generation,
            p.slot,
            p.targets,
            short(&p.sha256)
        );
    }
    println!(
        "records written: {}; denied: {}; lost to a full ring buffer: {}",
        status.records, status.denied, status.ringbuf_lost
    );
    Ok(())
}
