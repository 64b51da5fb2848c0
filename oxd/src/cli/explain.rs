//! `oxd explain`: prints what a policy decides for one action, and which rule decides it.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Result};
use oxd::{
    explain::{explain, Probe},
    policy::Policy,
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["exec", "open", "connect", "change"])))]
#[command(group(clap::ArgGroup::new("access").multiple(true).args(["read", "write"])))]
pub(crate) struct ExplainArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Executing this file.
    #[arg(long, value_name = "PATH")]
    exec: Option<PathBuf>,
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
    /// Changing the file system at PATH by OP: create, truncate, unlink, rmdir, mkdir, mknod,
    /// symlink, rename-from, rename-to, link-from, link-to, chmod, chown.
    #[arg(long, num_args = 2, value_names = ["OP", "PATH"])]
    change: Option<Vec<String>>,
}

impl ExplainArgs {
    fn probe(&self) -> Result<Probe> {
        if let Some([op, path]) = self.change.as_deref() {
            return Ok(Probe::Change {
                op: op.clone(),
                path: PathBuf::from(path),
            });
        }
        Ok(match (&self.exec, &self.open, self.connect) {
            (Some(path), _, _) => Probe::Exec(path.clone()),
            (None, Some(path), _) => Probe::Open {
                path: path.clone(),
                read: self.read,
                write: self.write,
            },
            (None, None, Some(addr)) => Probe::Connect {
                addr,
                udp: self.udp,
            },
            (None, None, None) => {
                bail!("name an action: --exec PATH, --open PATH --read|--write, --connect ADDR, or --change OP PATH")
            }
        })
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
