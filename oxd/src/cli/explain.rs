//! `oxd explain`: prints what a policy decides for one action, and which rule decides it.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Result};
use oxd::{
    evaluate::{NamespaceOp, SocketKind},
    explain::{explain, Probe},
    policy::Policy,
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["exec", "map", "open", "connect", "socket", "namespace"])))]
#[command(group(clap::ArgGroup::new("access").multiple(true).args(["read", "write"])))]
pub(crate) struct ExplainArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
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
}

fn parse_namespace_op(name: &str) -> Result<NamespaceOp, String> {
    NamespaceOp::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = NamespaceOp::ALL.iter().map(|op| op.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

impl ExplainArgs {
    fn probe(&self) -> Result<Probe> {
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
        bail!(
            "name an action: --exec PATH, --map PATH, --open PATH --read|--write, --connect ADDR, \
             --socket KIND or --namespace OP"
        )
    }
}

/// Prints the decision; returns the exit code: 0 if the action would happen, 1 if not.
pub(crate) fn run(args: &ExplainArgs) -> Result<i32> {
    let policy = Policy::load(&args.policy)?;
    let explanation = explain(&policy, &args.probe()?)?;
    println!("{}: {}", explanation.what, explanation.verdict);
    println!("  because: {}", explanation.why);
    println!(
        "  policy:  {} (sha256 {}), mode {}",
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str()
    );
    Ok(i32::from(!explanation.happens))
}
