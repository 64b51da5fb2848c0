//! `oxd explain`: what the policy decides for one action, and which rule decides it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    compile::{denied_files, file_identity},
    evaluate::{Reason, Request},
    policy::{Action, Mode, Policy},
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["exec", "open", "connect"])))]
#[command(group(clap::ArgGroup::new("access").multiple(true).args(["read", "write"])))]
pub struct ExplainArgs {
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Executing this file.
    #[arg(long, value_name = "PATH")]
    pub exec: Option<PathBuf>,
    /// Opening this file (with --read and/or --write).
    #[arg(long, value_name = "PATH", requires = "access")]
    pub open: Option<PathBuf>,
    /// The open is for reading.
    #[arg(long, requires = "open")]
    pub read: bool,
    /// The open is for writing.
    #[arg(long, requires = "open")]
    pub write: bool,
    /// Connecting to this address (IP:PORT, or [IPV6]:PORT).
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<SocketAddr>,
    /// The connect is on a UDP socket (default TCP).
    #[arg(long, requires = "connect")]
    pub udp: bool,
}

/// Resolves a path as the kernel will see it: symlinks, `.` and `..` followed. A file that does
/// not exist yet (an open that creates it) is resolved through its parent directory.
fn resolve(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        if let Ok(parent) = std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }) {
            return Ok(parent.join(name));
        }
    }
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        bail!("cannot resolve {}: give an absolute path", path.display())
    }
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// Prints the decision; returns the exit code: 0 if the action would happen, 1 if not.
pub fn explain(args: &ExplainArgs) -> Result<i32> {
    let policy = Policy::load(&args.policy)?;
    let (request, what) = if let Some(path) = &args.exec {
        let real = resolve(path)?;
        (
            Request::Exec {
                path: path_string(&real)?,
            },
            describe("exec", path, &real),
        )
    } else if let Some(path) = &args.open {
        let real = resolve(path)?;
        let access = match (args.read, args.write) {
            (true, true) => "read,write",
            (false, true) => "write",
            _ => "read",
        };
        (
            Request::Open {
                path: path_string(&real)?,
                read: args.read,
                write: args.write,
            },
            format!("{} for {access}", describe("open", path, &real)),
        )
    } else if let Some(addr) = args.connect {
        let proto = if args.udp { "udp" } else { "tcp" };
        (
            Request::Connect {
                addr,
                udp: args.udp,
                send: false,
            },
            format!("connect {addr} ({proto})"),
        )
    } else {
        bail!("name an action: --exec PATH, --open PATH --read|--write, or --connect ADDR");
    };

    // A file named by an exact deny rule is denied under any of its names (hard links).
    let denied = match &request {
        Request::Exec { path } | Request::Open { path, .. } => file_identity(Path::new(path))
            .and_then(|id| {
                denied_files(&policy, &file_identity)
                    .into_iter()
                    .find_map(|(file, rules)| (file == id).then_some(rules))
            }),
        Request::Connect { .. } => None,
    };
    let decision = policy.evaluate_with(&request, denied);
    let verdict = match (decision.action, policy.mode) {
        (Action::Allow, _) => "allow".to_owned(),
        (Action::Deny, Mode::Enforce) => "deny (fails with EPERM)".to_owned(),
        (Action::Deny, Mode::Audit) => {
            "deny, not enforced (audit mode: recorded, allowed)".to_owned()
        }
    };
    println!("{what}: {verdict}");
    let why = match decision.reason {
        Reason::Rule(id) => match policy.rule(id) {
            Some(rule) => format!("rule {} `{}`", rule.id, rule.text),
            None => format!("rule #{id}"),
        },
        Reason::Default => "no rule matches: the category's default".to_owned(),
        Reason::PathTooLong => format!(
            "the path is longer than the {} bytes the kernel's rule keys hold: denied, fail closed",
            oxd_common::MAX_RULE_PATH_LEN
        ),
        Reason::NotDecided => {
            "the policy has no section for this category: not decided, not recorded".to_owned()
        }
    };
    println!("  because: {why}");
    println!(
        "  policy:  {} (sha256 {}), mode {}",
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str()
    );
    let happens = decision.action == Action::Allow || policy.mode == Mode::Audit;
    Ok(if happens { 0 } else { 1 })
}

fn describe(op: &str, given: &Path, real: &Path) -> String {
    if given == real {
        format!("{op} {}", real.display())
    } else {
        format!("{op} {} (resolves to {})", given.display(), real.display())
    }
}
