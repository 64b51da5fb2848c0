use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use oxd::{
    explain::ExplainArgs,
    policy::Policy,
    run::{self, RunArgs},
};
use tracing_subscriber::EnvFilter;

/// Execution authorization for AI agents, enforced by the Linux kernel.
#[derive(Debug, Parser)]
#[command(name = "oxd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command confined by a policy: its execs and connects are decided in the kernel.
    Run(RunArgs),
    /// Show what a policy decides for one action, and which rule decides it (exit status 0 if
    /// the action would happen, 1 if it would be denied).
    Explain(ExplainArgs),
    /// Check what enforcement needs from this host (BTF, BPF-LSM, cgroup v2, cgroup hooks,
    /// lockdown, bpffs, capabilities) and say what to change (exit status 1 if anything is
    /// missing).
    Doctor,
    /// Run the long-lived service: confine cgroups under named policies on request (see `oxd
    /// ctl`), replace policies atomically, keep enforcement pinned across crashes.
    Daemon(oxd::daemon::DaemonArgs),
    /// Talk to a running `oxd daemon`: confine, release, replace, list, status.
    Ctl(oxd::control::CtlArgs),
    /// Read audit logs: verify their hash chain, or print them readably.
    #[command(subcommand)]
    Audit(oxd::audit_cmd::AuditCommand),
    /// Validate a policy file; print where and why it is wrong.
    Check {
        /// Policy file (TOML).
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OXD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check { policy } => check(&policy),
        Command::Explain(args) => oxd::explain::explain(&args),
        Command::Doctor => oxd::doctor::doctor(),
        Command::Daemon(args) => oxd::daemon::daemon(args),
        Command::Ctl(args) => oxd::control::ctl(&args),
        Command::Audit(command) => oxd::audit_cmd::run(&command),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("oxd: error: {e:#}");
            save_verifier_log(&e);
            ExitCode::from(run::EXIT_OXD_FAILED as u8)
        }
    }
}

/// A verifier rejection's message shows the end of the log; the whole log goes to a file.
fn save_verifier_log(error: &anyhow::Error) {
    let Some((program, log)) = error.chain().find_map(|e| {
        e.downcast_ref::<oxd::enforcer::EnforcerError>()?
            .verifier_log()
    }) else {
        return;
    };
    let path =
        std::env::temp_dir().join(format!("oxd-verifier-{program}-{}.log", std::process::id()));
    match std::fs::write(&path, log) {
        Ok(()) => eprintln!("oxd: the verifier's whole log is in {}", path.display()),
        Err(e) => eprintln!(
            "oxd: cannot save the verifier's log to {}: {e}",
            path.display()
        ),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<i32> {
    let policy = Policy::load(path)?;
    let exec = policy.exec.as_ref().map_or_else(
        || "not decided".to_owned(),
        |e| format!("{} rules, default {}", e.rules.len(), e.default.as_str()),
    );
    let file = policy.file.as_ref().map_or_else(
        || "not decided".to_owned(),
        |f| {
            format!(
                "{} read rules, default {}, {} write rules, default {}",
                f.read.len(),
                f.read_default.as_str(),
                f.write.len(),
                f.write_default.as_str()
            )
        },
    );
    let network = policy.network.as_ref().map_or_else(
        || "not decided".to_owned(),
        |n| format!("{} rules, default {}", n.rules.len(), n.default.as_str()),
    );
    println!(
        "{}: ok: policy `{}` (sha256 {}), mode {}; exec: {exec}; file: {file}; network: {network}",
        path.display(),
        policy.name,
        &policy.sha256[..16],
        policy.mode.as_str(),
    );
    Ok(0)
}
